// radargate -- the command-line tool. One sub-command per tools/cmd_<name>.cpp.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "cli.hpp"
#include "cli_common.hpp"
#include "radargate/cpu.hpp"

namespace {
struct Command {
  const char* name;
  int (*run)(int argc, char** argv);  // argv[0] is the sub-command's name
  const char* summary;
};

// One line per sub-command.
const Command commands[] = {
    {"run", radargate::cli::cmd_run, "forward (and backward) of a model file on an input file"},
    {"init", radargate::cli::cmd_init, "write a random model of any variant"},
    {"cone", radargate::cli::cmd_cone, "cone / hull membership of a batch of points, with certificates"},
    {"verify", radargate::cli::cmd_verify, "does a model leave the cone of its experts? (expansion report)"},
    {"bench", radargate::cli::cmd_bench, "time one layer call on a random model (no file I/O)"},
    {"train", radargate::cli::cmd_train, "learn chosen tensors of a model on a data file (AdamW or SGD)"},
    {"info", radargate::cli::cmd_info, "list the layers of a model file: shapes, variant, dtype, parameters"},
    {"import-peft", radargate::cli::cmd_import_peft, "build a model file from PEFT LoRA adapters (and a base model)"},
};

void usage(std::FILE* out) {
  std::fprintf(out, "usage: radargate <command> [options]\n\ncommands:\n");
  for (const Command& c : commands) std::fprintf(out, "  %-11s %s\n", c.name, c.summary);
  std::fprintf(out, "\n'radargate <command> --help' describes one command.\n");
}
}  // namespace

int main(int argc, char** argv) {
  // A BLAS the cpu backend's products run through (RADARGATE_USE_BLAS) runs each call on the thread
  // that makes it; the backend's own --threads are the only ones.
  radargate::use_single_threaded_blas();
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    usage(stdout);
    return 0;
  }
  for (const Command& c : commands)
    if (name == c.name) {
      try {
        return c.run(argc - 1, argv + 1);
      } catch (const radargate::cli::usage_error& e) {
        std::fprintf(stderr, "radargate %s: error: %s\n%s(see 'radargate %s --help')\n", c.name,
                     radargate::cli::one_line(e.what()).c_str(), e.usage().c_str(), c.name);
        return 2;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "radargate %s: error: %s\n", c.name, radargate::cli::one_line(e.what()).c_str());
        return 1;
      }
    }
  std::fprintf(stderr, "radargate: unknown command '%s'\n", radargate::cli::one_line(name).c_str());
  usage(stderr);
  return 2;
}
