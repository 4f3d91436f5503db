// core/named.h — enums that read and print as names. Each enum has one string
// table, EnumNames<E> (names in enumerator order); parsing, printing, the
// choices in --help and the JSON of checkpoints all read it. Inside the
// program the values are compared as enums; a name is turned into one at
// the edge (a flag, a config file, a checkpoint's JSON) and back to text
// only for output.
//
//   enum class Norm : uint8_t { rms, layer };
//   template <> struct EnumNames<Norm> { static constexpr std::array<std::string_view, 2> names{"rms", "layer"}; };
//   Named<Norm> n = "layer";        // parsed; an unknown name throws vm::Error
//   if (n == Norm::layer) ...       // compared as an enum (n == "layer" does not compile)
//
// An optional `static constexpr std::string_view noun` in EnumNames turns the
// message for an unknown name into "unknown <noun> 'x' (a, b, c)"; without
// it the message is "must be a, b or c, got 'x'". Callers that know the flag
// or key put it in front ("--norm: must be rms or layer, got 'x'").
#pragma once
#include <array>
#include <cstddef>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>

namespace vm {

[[noreturn]] void fail(const std::string& msg);  // core/tensor.h: throws vm::Error

template <class E>
struct EnumNames;  // specialise: static constexpr std::array<std::string_view, N> names{...};

template <class E>
constexpr size_t enum_count() {
  return EnumNames<E>::names.size();
}

// Every name non-empty and distinct (checked with static_assert next to each table).
template <class E>
constexpr bool enum_names_ok() {
  const auto& n = EnumNames<E>::names;
  for (size_t i = 0; i < n.size(); ++i) {
    if (n[i].empty()) return false;
    for (size_t j = 0; j < i; ++j)
      if (n[i] == n[j]) return false;
  }
  return true;
}

template <class E>
constexpr std::string_view enum_name(E e) {
  size_t i = static_cast<size_t>(e);
  return i < enum_count<E>() ? EnumNames<E>::names[i] : std::string_view("?");
}

template <class E>
constexpr std::optional<E> find_enum(std::string_view s) {
  for (size_t i = 0; i < enum_count<E>(); ++i)
    if (EnumNames<E>::names[i] == s) return static_cast<E>(i);
  return std::nullopt;
}

// "a | b | c" (help texts), or with sep ", " and last " or ": "a, b or c" (messages).
template <class E>
std::string enum_choices(std::string_view sep = " | ", std::string_view last = " | ") {
  std::string s;
  for (size_t i = 0; i < enum_count<E>(); ++i) {
    if (i) s += i + 1 == enum_count<E>() ? last : sep;
    s += EnumNames<E>::names[i];
  }
  return s;
}

// The value named s, or vm::Error "must be a, b or c, got 's'" (no flag in front).
template <class E>
E parse_enum(std::string_view s) {
  if (auto e = find_enum<E>(s)) return *e;
  if constexpr (requires { EnumNames<E>::noun; })
    fail("unknown " + std::string(EnumNames<E>::noun) + " '" + std::string(s) + "' (" + enum_choices<E>(", ", ", ") +
         ")");
  else
    fail("must be " + enum_choices<E>(", ", " or ") + ", got '" + std::string(s) + "'");
}

// An enum value that converts from and to its name. It converts implicitly to
// E (switch, ==, registries indexed by it) but not to or from a string in a
// comparison, so `x == "name"` is a compile error.
template <class E>
class Named {
 public:
  constexpr Named(E e = E{}) : e_(e) {}
  Named(const char* s) : e_(parse_enum<E>(s)) {}
  Named(const std::string& s) : e_(parse_enum<E>(s)) {}
  explicit Named(std::string_view s) : e_(parse_enum<E>(s)) {}
  constexpr operator E() const { return e_; }
  constexpr E value() const { return e_; }
  constexpr std::string_view name() const { return enum_name(e_); }
  std::string str() const { return std::string(name()); }

 private:
  E e_;
};

template <class E>
std::ostream& operator<<(std::ostream& o, const Named<E>& v) {
  return o << v.name();
}

// nlohmann::json: a Named value is its name (found by ADL; no json include needed here).
template <class Json, class E>
void to_json(Json& j, const Named<E>& v) {
  j = v.str();
}
template <class Json, class E>
void from_json(const Json& j, Named<E>& v) {
  v = Named<E>(j.template get<std::string>());
}

}  // namespace vm
