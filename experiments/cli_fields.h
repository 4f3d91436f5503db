// experiments/cli_fields.h — the CLI11 side of core/named.h: an option whose
// value is one of an enum's names. An unknown name fails in one line naming
// the flag (vm::Error: exit code 1, as the other value checks).
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "core/named.h"
#include "core/tensor.h"

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

}  // namespace vm::cli
