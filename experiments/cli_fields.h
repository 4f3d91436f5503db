// experiments/cli_fields.h — the CLI11 side of the field tables
// (core/fields.h): every row with a flag and one of the `uses` bits becomes an
// option of the subcommand, bound to its member, with the row's help (for an
// enum, followed by its names from its string table) and its default. An
// unknown enum name fails in one line naming the flag (vm::Error: exit code
// 1, as the other value checks).
#pragma once
#include <CLI/CLI.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "core/fields.h"
#include "core/tensor.h"
#include "nn/router.h"

namespace vm::cli {

// An option whose value is one of E's names (core/named.h); an unknown name
// fails with "<flag>: must be a, b or c, got 'x'".
template <class E>
CLI::Option* add_enum_option(CLI::App* s, const std::string& flag, Named<E>& v, const std::string& help) {
  auto set = [&v, flag](const std::string& text) {
    try {
      v = parse_enum<E>(text);
    } catch (const Error& e) {
      fail(flag + ": " + e.what());
    }
  };
  return s->add_option_function<std::string>(flag, set, help + ": " + enum_choices<E>())->default_str(v.str());
}

// " (mfvr, fcvr)": the routers that read the RouterConfig field `key`
// (nn/routers/registry.cpp), or "" when every router does or none.
inline std::string routers_reading(std::string_view key) {
  std::string names;
  size_t n = 0;
  for (size_t i = 0; i < enum_count<nn::RouterKind>(); ++i)
    if (nn::router_reads((nn::RouterKind)i, key)) names += (n++ ? ", " : "") + std::string(enum_name((nn::RouterKind)i));
  return n == 0 || n == enum_count<nn::RouterKind>() ? std::string() : " (" + names + ")";
}

// "Model", "Router", ...: the --help section of a field's group.
inline std::string group_title(Group g) {
  std::string t(enum_name(g));
  t[0] = (char)(t[0] - 'a' + 'A');
  return t;
}

template <class C>
void add_field_options(CLI::App* s, C& cfg, unsigned uses) {
  for_each_field(cfg, [&](const auto& row, auto& v, const std::string&) {
    if (!(row.use & uses) || !*row.flag) return;
    using T = std::remove_cvref_t<decltype(v)>;
    std::string flag = row.flag, help = row.help;
    if constexpr (std::is_same_v<typename std::remove_cvref_t<decltype(row)>::config, nn::RouterConfig>)
      help += routers_reading(row.key);
    if ((row.use & (Use::override | Use::inherit)) && (uses & (Use::eval | Use::inspect)))
      help += " [default: the checkpoint's]";
    CLI::Option* o = nullptr;
    if constexpr (is_named<T>::value) {
      o = add_enum_option(s, flag, v, help);
    } else if constexpr (std::is_same_v<T, bool>) {
      if (row.use & Use::bool_arg)
        o = s->add_option(flag, v, help)->capture_default_str();
      else
        o = s->add_flag((row.use & Use::negated ? "!" : "") + flag, v, help);
    } else if constexpr (is_vector<T>::value) {
      o = s->add_option(flag, v, help);
      if constexpr (std::is_arithmetic_v<typename T::value_type>) o->delimiter(',');  // 2,3 (regexes repeat the flag)
    } else {
      o = s->add_option(flag, v, help);
      if constexpr (std::is_same_v<T, std::string>) {
        if (!v.empty()) o->capture_default_str();
      } else {
        o->capture_default_str();
      }
    }
    o->group(group_title(row.group));  // --help lists the flags by group
  });
}

// The flags of cfg's table bound on s (add_field_options with the same
// `uses`) that were given, on the command line or in --config.
template <class C>
std::vector<std::string> given_flags(CLI::App* s, C& cfg, unsigned uses) {
  std::vector<std::string> out;
  for_each_field(cfg, [&](const auto& row, auto&, const std::string&) {
    if ((row.use & uses) && *row.flag && s->count(row.flag) > 0) out.push_back(row.flag);
  });
  return out;
}

}  // namespace vm::cli
