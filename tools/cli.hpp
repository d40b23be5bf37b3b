// Declarations shared by the sub-commands of the radargate tool.
#pragma once

namespace radargate {
namespace cli {
// Each returns the process exit code; errors are thrown as radargate::error (exit code 1).
int cmd_run(int argc, char** argv);
int cmd_init(int argc, char** argv);
int cmd_cone(int argc, char** argv);
int cmd_verify(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_train(int argc, char** argv);
int cmd_info(int argc, char** argv);
int cmd_import_peft(int argc, char** argv);
}  // namespace cli
}  // namespace radargate
