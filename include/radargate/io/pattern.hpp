// radargate/io/pattern.hpp -- a linear-time matcher for the regular expressions of PEFT's
// rank_pattern and alpha_pattern keys (radargate/io/peft.hpp, docs/PEFT.md).
//
// The keys come from adapter_config.json files downloaded from elsewhere, so matching one must be
// safe whatever it says: no recursion that a deep pattern can overflow, no backtracking that a
// pattern such as (a*)*b can make exponential. The pattern is compiled to a small program and run
// as a Pike VM (every alternative advanced in step, one character at a time): time is
// O(program size x subject length), memory O(program size).
//
// The syntax is the part of Python's `re` that module names call for, with Python's meaning:
//   literals; '.' (any character but '\n'); '^' and '$' ('$' also before a final '\n');
//   classes [abc] [a-z] [^...] with escapes inside; \d \D \w \W \s \S; '\' before any other
//   non-alphanumeric character (a literal), \n \t \r \f \v;
//   groups (...) (?:...) (?P<name>...); alternation |;
//   repetition * + ? {m} {m,} {m,n} {,n}, each optionally lazy (+?, *?: the same set of matches).
// Anything else (backreferences, lookaround, \b, flags, ...) is refused with an error naming the
// construct. Subjects are bytes; \w and \d are ASCII (module names are ASCII identifiers).
#pragma once

#include <bitset>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../error.hpp"

namespace radargate {
namespace io {
namespace pattern {

/// Limits that keep a hostile pattern cheap: nesting of groups, the bound of a counted repetition,
/// and the size of the compiled program.
struct Limits {
  int max_depth = 32;
  int max_count = 1000;
  std::size_t max_program = 20000;
};

namespace detail {

using ByteSet = std::bitset<256>;

struct Node {  // the parsed pattern
  enum Kind { empty, set, begin, end, concat, alt, repeat } kind = empty;
  ByteSet bytes;           // set
  std::vector<Node> kids;  // concat, alt: the parts; repeat: the one operand
  int min = 0, max = -1;   // repeat: max -1 = unbounded
};

struct Inst {
  enum Op { set, split, jump, begin, end, match } op = match;
  ByteSet bytes;     // set
  int x = 0, y = 0;  // split: both; jump: x
};

inline ByteSet range(int lo, int hi) {
  ByteSet b;
  for (int c = lo; c <= hi; ++c) b.set(std::size_t(c));
  return b;
}
inline ByteSet digits() { return range('0', '9'); }
inline ByteSet words() { return range('a', 'z') | range('A', 'Z') | digits() | range('_', '_'); }
inline ByteSet spaces() { return range(' ', ' ') | range('\t', '\r'); }

class Parser {
 public:
  Parser(const std::string& text, const Limits& limits) : s_(text), lim_(limits) {}

  Node parse() {
    Node n = alternation(0);
    if (i_ < s_.size()) fail_at("unbalanced ')'");
    return n;
  }

 private:
  const std::string& s_;
  const Limits& lim_;
  std::size_t i_ = 0;

  [[noreturn]] void fail_at(const std::string& what) const { radargate::detail::fail(what, " at position ", i_); }
  bool more() const { return i_ < s_.size(); }
  // One character of the pattern for a message: itself when printable ASCII, else \xNN.
  static std::string shown(char c) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) return std::string(1, c);
    static const char* hex = "0123456789abcdef";
    return std::string("\\x") + hex[u >> 4] + hex[u & 15];
  }
  char peek() const { return s_[i_]; }

  Node alternation(int depth) {
    if (depth > lim_.max_depth) fail_at("groups nested deeper than " + std::to_string(lim_.max_depth) + " levels");
    Node a;
    a.kind = Node::alt;
    a.kids.push_back(concatenation(depth));
    while (more() && peek() == '|') {
      ++i_;
      a.kids.push_back(concatenation(depth));
    }
    return a.kids.size() == 1 ? std::move(a.kids.front()) : a;
  }

  Node concatenation(int depth) {
    Node c;
    c.kind = Node::concat;
    while (more() && peek() != '|' && peek() != ')') c.kids.push_back(repetition(depth));
    return c;
  }

  Node repetition(int depth) {
    Node atom_node = atom(depth);
    while (more()) {
      int lo, hi;
      const std::size_t at = i_;
      const char c = peek();
      if (c == '*')
        lo = 0, hi = -1, ++i_;
      else if (c == '+')
        lo = 1, hi = -1, ++i_;
      else if (c == '?')
        lo = 0, hi = 1, ++i_;
      else if (c == '{' && counted(lo, hi)) {
      } else
        break;
      if (atom_node.kind == Node::repeat || atom_node.kind == Node::begin || atom_node.kind == Node::end) {
        i_ = at;
        fail_at(atom_node.kind == Node::repeat ? "multiple repeat" : "nothing to repeat");
      }
      if (more() && peek() == '?') ++i_;  // lazy: matches the same strings
      Node r;
      r.kind = Node::repeat;
      r.min = lo;
      r.max = hi;
      r.kids.push_back(std::move(atom_node));
      atom_node = std::move(r);
    }
    return atom_node;
  }

  // {m} {m,} {m,n} {,n}; anything else is a literal '{', as in Python.
  bool counted(int& lo, int& hi) {
    std::size_t j = i_ + 1;
    auto number = [&](int& v) {
      const std::size_t start = j;
      long long n = 0;
      while (j < s_.size() && s_[j] >= '0' && s_[j] <= '9') {
        n = n * 10 + (s_[j] - '0');
        if (n > lim_.max_count) fail_at("repetition count above " + std::to_string(lim_.max_count));
        ++j;
      }
      v = int(n);
      return j > start;
    };
    int a = 0, b = -1;
    const bool has_a = number(a);
    if (j < s_.size() && s_[j] == '}') {
      if (!has_a) return false;
      b = a;
    } else if (j < s_.size() && s_[j] == ',') {
      ++j;
      if (!number(b)) b = -1;
      if (j >= s_.size() || s_[j] != '}') return false;
    } else {
      return false;
    }
    if (b >= 0 && b < a) fail_at("min repeat greater than max repeat");
    i_ = j + 1;
    lo = a;
    hi = b;
    return true;
  }

  Node leaf(ByteSet b) {
    Node n;
    n.kind = Node::set;
    n.bytes = b;
    return n;
  }

  Node atom(int depth) {
    const char c = peek();
    Node n;
    switch (c) {
      case '(': {
        ++i_;
        if (more() && peek() == '?') {
          ++i_;
          if (more() && peek() == ':') {
            ++i_;
          } else if (more() && peek() == 'P' && i_ + 1 < s_.size() && s_[i_ + 1] == '<') {
            const std::size_t close = s_.find('>', i_);
            if (close == std::string::npos) fail_at("unterminated group name");
            i_ = close + 1;
          } else {
            fail_at("group syntax '(?" + (more() ? shown(peek()) : std::string()) +
                    "' (lookaround, flags, ...) that this matcher does not read");
          }
        }
        n = alternation(depth + 1);
        if (!more() || peek() != ')') fail_at("missing ')'");
        ++i_;
        return n;
      }
      case ')':
        fail_at("unbalanced ')'");
      case '*':
      case '+':
      case '?':
        fail_at("nothing to repeat");
      case '^':
        ++i_;
        n.kind = Node::begin;
        return n;
      case '$':
        ++i_;
        n.kind = Node::end;
        return n;
      case '.':
        ++i_;
        return leaf(~range('\n', '\n'));
      case '[':
        return leaf(byte_class());
      case '\\':
        return leaf(escape(false));
      default:
        ++i_;
        return leaf(range(static_cast<unsigned char>(c), static_cast<unsigned char>(c)));
    }
  }

  // After '\': one byte set. In a class, \b would be a backspace; it is refused everywhere.
  ByteSet escape(bool in_class) {
    ++i_;
    if (!more()) fail_at("bad escape (end of pattern)");
    const char c = s_[i_++];
    switch (c) {
      case 'd':
        return digits();
      case 'D':
        return ~digits();
      case 'w':
        return words();
      case 'W':
        return ~words();
      case 's':
        return spaces();
      case 'S':
        return ~spaces();
      case 'n':
        return range('\n', '\n');
      case 't':
        return range('\t', '\t');
      case 'r':
        return range('\r', '\r');
      case 'f':
        return range('\f', '\f');
      case 'v':
        return range('\v', '\v');
      default:
        break;
    }
    const unsigned char u = static_cast<unsigned char>(c);
    if ((u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || u >= 0x80) {
      --i_;
      fail_at(std::string("escape '\\") + shown(c) + "'" + (in_class ? " in a class" : "") +
              " that this matcher does not read");
    }
    return range(u, u);
  }

  ByteSet byte_class() {
    ++i_;  // '['
    bool negate = false;
    if (more() && peek() == '^') negate = true, ++i_;
    ByteSet b;
    bool first = true;
    while (true) {
      if (!more()) fail_at("unterminated character set");
      if (peek() == ']' && !first) break;
      first = false;
      ByteSet one;
      int lo = -1;
      if (peek() == '\\') {
        one = escape(true);
        if (one.count() == 1) lo = int(first_byte(one));
      } else {
        lo = static_cast<unsigned char>(s_[i_++]);
        one = range(lo, lo);
      }
      if (lo >= 0 && i_ + 1 < s_.size() && peek() == '-' && s_[i_ + 1] != ']') {
        ++i_;
        int hi;
        if (peek() == '\\') {
          const ByteSet e = escape(true);
          if (e.count() != 1) fail_at("bad character range");
          hi = int(first_byte(e));
        } else {
          hi = static_cast<unsigned char>(s_[i_++]);
        }
        if (hi < lo) fail_at("bad character range");
        one = range(lo, hi);
      }
      b |= one;
    }
    ++i_;  // ']'
    return negate ? ~b : b;
  }

  static std::size_t first_byte(const ByteSet& b) {
    for (std::size_t k = 0; k < 256; ++k)
      if (b.test(k)) return k;
    return 0;
  }
};

class Compiler {
 public:
  explicit Compiler(const Limits& limits) : lim_(limits) {}
  std::vector<Inst> program(const Node& n) {
    emit(n);
    add(Inst{Inst::match, {}, 0, 0});
    return std::move(prog_);
  }

 private:
  const Limits& lim_;
  std::vector<Inst> prog_;

  int add(Inst i) {
    if (prog_.size() >= lim_.max_program)
      radargate::detail::fail("the pattern compiles to more than ", lim_.max_program,
                              " steps (counted repetitions multiply it)");
    prog_.push_back(std::move(i));
    return int(prog_.size()) - 1;
  }
  int here() const { return int(prog_.size()); }

  void emit(const Node& n) {  // recursion depth is bounded by the parser's nesting limit
    switch (n.kind) {
      case Node::empty:
        return;
      case Node::set:
        add(Inst{Inst::set, n.bytes, 0, 0});
        return;
      case Node::begin:
        add(Inst{Inst::begin, {}, 0, 0});
        return;
      case Node::end:
        add(Inst{Inst::end, {}, 0, 0});
        return;
      case Node::concat:
        for (const Node& k : n.kids) emit(k);
        return;
      case Node::alt: {
        std::vector<int> jumps;
        for (std::size_t k = 0; k + 1 < n.kids.size(); ++k) {
          const int split = add(Inst{Inst::split, {}, 0, 0});
          prog_[split].x = here();
          emit(n.kids[k]);
          jumps.push_back(add(Inst{Inst::jump, {}, 0, 0}));
          prog_[split].y = here();
        }
        emit(n.kids.back());
        for (int j : jumps) prog_[j].x = here();
        return;
      }
      case Node::repeat: {
        const Node& e = n.kids.front();
        for (int k = 0; k < n.min; ++k) emit(e);
        if (n.max < 0) {  // e*: L: split body, out; body; jump L
          const int split = add(Inst{Inst::split, {}, 0, 0});
          prog_[split].x = here();
          emit(e);
          add(Inst{Inst::jump, {}, split, 0});
          prog_[split].y = here();
        } else {  // up to max - min optional copies
          std::vector<int> splits;
          for (int k = n.min; k < n.max; ++k) {
            const int split = add(Inst{Inst::split, {}, 0, 0});
            prog_[split].x = here();
            splits.push_back(split);
            emit(e);
          }
          for (int s : splits) prog_[s].y = here();
        }
        return;
      }
    }
  }
};

}  // namespace detail

/// A compiled pattern. Errors (radargate::error) name the construct and its position.
class Regex {
 public:
  explicit Regex(const std::string& text, const Limits& limits = {}) {
    detail::Parser parser(text, limits);
    const detail::Node n = parser.parse();
    prog_ = detail::Compiler(limits).program(n);
  }

  /// Python's re.match(pattern, s) is not None: a match that starts at 0 (and may end anywhere).
  bool match_prefix(const std::string& s) const {
    const std::size_t n = prog_.size();
    std::vector<int> now, next, stack;
    std::vector<std::size_t> mark(n, std::size_t(-1));
    auto add = [&](std::vector<int>& list, int pc0, std::size_t pos) -> bool {  // epsilon closure; true on match
      stack.assign(1, pc0);
      while (!stack.empty()) {
        const int pc = stack.back();
        stack.pop_back();
        if (mark[std::size_t(pc)] == pos) continue;
        mark[std::size_t(pc)] = pos;
        const detail::Inst& in = prog_[std::size_t(pc)];
        switch (in.op) {
          case detail::Inst::match:
            return true;
          case detail::Inst::jump:
            stack.push_back(in.x);
            break;
          case detail::Inst::split:
            stack.push_back(in.y), stack.push_back(in.x);
            break;
          case detail::Inst::begin:
            if (pos == 0) stack.push_back(pc + 1);
            break;
          case detail::Inst::end:
            if (pos == s.size() || (pos + 1 == s.size() && s[pos] == '\n')) stack.push_back(pc + 1);
            break;
          case detail::Inst::set:
            list.push_back(pc);
            break;
        }
      }
      return false;
    };
    if (add(now, 0, 0)) return true;
    for (std::size_t pos = 0; pos < s.size() && !now.empty(); ++pos) {
      next.clear();
      const unsigned char c = static_cast<unsigned char>(s[pos]);
      for (int pc : now)
        if (prog_[std::size_t(pc)].bytes.test(c) && add(next, pc + 1, pos + 1)) return true;
      std::swap(now, next);
    }
    return false;
  }

  std::size_t program_size() const { return prog_.size(); }

 private:
  std::vector<detail::Inst> prog_;
};

}  // namespace pattern
}  // namespace io
}  // namespace radargate
