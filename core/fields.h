// core/fields.h — one field table per config struct. A row names one member:
// its JSON key (the member's name), its flag, its group, where it is used and
// its help text; the default is the member's initializer. Everything that
// lists the fields of a config reads the table: the CLI11 flags
// (experiments/cli_fields.h), the JSON of checkpoints and of a reproduce
// stage (and so its cache key), eval's overrides of a checkpoint's router,
// reproduce's flags and --ablate keys, and the tests that every field has a
// flag, round-trips through JSON and changes a stage's cache key.
//
//   template <> struct FieldTable<ModelConfig> {
//     using C = ModelConfig;
//     static constexpr auto rows = std::tuple{
//         VM_FIELD(d_model, "--d-model", Group::model, Use::train, "model width"), ...};
//   };
//   static_assert(fields_complete<ModelConfig>());  // a member without a row does not compile
//
// A row whose member has its own table (RunConfig::model) nests: its rows
// are visited with the key path "model.d_model".
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/named.h"

namespace vm {

// Where a field belongs in --help (and which rows reproduce's training
// stages reset: Group::evaluation fields are read by evaluation only).
enum class Group : uint8_t { run, data, model, router, optimisation, evaluation };
template <>
struct EnumNames<Group> {
  static constexpr std::array<std::string_view, 6> names{"run", "data", "model", "router", "optimisation", "evaluation"};
};

// Where a field is used: bits of Field::use.
struct Use {
  enum : unsigned {
    train = 1u << 0,     // a flag of `vmoer train`
    eval = 1u << 1,      // a flag of `vmoer eval`
    inspect = 1u << 2,   // a flag of `vmoer inspect`
    repro = 1u << 3,     // a flag of `vmoer reproduce`: given, it overrides the preset in every stage
    ablate = 1u << 4,    // a key of `vmoer reproduce --ablate KEY=v1,v2` (the flag's name with '_' for '-')
    override = 1u << 5,  // eval/inspect: given on the command line, it overrides the checkpoint's router setting
    runtime = 1u << 6,   // cannot change a result (threads, output dir, progress bar): not in a stage's cache key
    negated = 1u << 7,   // bool set false by its flag (--no-progress)
    bool_arg = 1u << 8,  // bool flag that takes a value (--tied-head false)
    derived = 1u << 9,   // no flag: set by the program (from the data, or from another flag); the help says which
    inherit = 1u << 10,  // a data setting a checkpoint records: eval/inspect/stage 2 take the checkpoint's value unless given
    // In a stage's cache key only at a value other than its default: a field
    // added after caches exist (their keys, made without it, still match).
    key_if_set = 1u << 11,
  };
};

template <class C, class T>
struct Field {
  const char* key;   // JSON key = the member's name
  const char* flag;  // "--d-model"; "" for Use::derived rows
  T C::*member;
  Group group;
  unsigned use;
  const char* help;
  using type = T;
  using config = C;
};

// Rows are written with VM_FIELD inside a FieldTable specialisation that defines `using C = <the config>`.
#define VM_FIELD(member, flag, group, use, help) ::vm::Field{#member, flag, &C::member, group, use, help}

template <class C>
struct FieldTable;  // specialise: using C = ...; static constexpr auto rows = std::tuple{VM_FIELD(...), ...};

template <class T>
concept HasFields = requires { FieldTable<T>::rows; };

template <class T>
struct is_named : std::false_type {};
template <class E>
struct is_named<Named<E>> : std::true_type {};
template <class T>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {};

// f(row) for every row of C's table, in order.
template <class C, class F>
constexpr void for_each_row(F&& f) {
  std::apply([&](const auto&... row) { (f(row), ...); }, FieldTable<C>::rows);
}

template <class C>
constexpr size_t row_count() {
  return std::tuple_size_v<std::remove_cvref_t<decltype(FieldTable<C>::rows)>>;
}

// f(row, value, path) for every leaf field of c (nested tables visited in
// place); path is "key" or "outer.key". Works on const and non-const c.
template <class C, class F>
void for_each_field(C& c, F&& f, const std::string& prefix = "") {
  using Plain = std::remove_const_t<C>;
  for_each_row<Plain>([&](const auto& row) {
    auto& v = c.*(row.member);
    using T = typename std::remove_cvref_t<decltype(row)>::type;
    if constexpr (HasFields<T>)
      for_each_field(v, f, prefix + row.key + ".");
    else
      f(row, v, prefix + row.key);
  });
}

// Copy the leaf fields of src into dst where pred(row, path) holds.
template <class C, class P>
void copy_fields(C& dst, const C& src, P&& pred) {
  for_each_field(dst, [&](const auto& row, auto& v, const std::string& path) {
    if (!pred(row, path)) return;
    for_each_field(src, [&](const auto& srow, const auto& sv, const std::string& spath) {
      if constexpr (std::is_same_v<std::remove_cvref_t<decltype(v)>, std::remove_cvref_t<decltype(sv)>>)
        if (spath == path) v = sv;
    });
  });
}

// The JSON object of c: every row under its key (nested tables as objects).
template <class Json, class C>
Json fields_to_json(const C& c) {
  Json j = Json::object();
  for_each_row<C>([&](const auto& row) {
    using T = typename std::remove_cvref_t<decltype(row)>::type;
    if constexpr (HasFields<T>)
      j[row.key] = fields_to_json<Json>(c.*(row.member));
    else
      j[row.key] = c.*(row.member);
  });
  return j;
}

// Fill c from j: a missing key leaves the default; a value of the wrong type
// throws (nlohmann's type_error, or vm::Error for an unknown enum name).
template <class Json, class C>
void fields_from_json(const Json& j, C& c) {
  if (!j.is_object()) fail("expected a JSON object, got " + j.dump());
  c = C{};
  for_each_row<C>([&](const auto& row) {
    using T = typename std::remove_cvref_t<decltype(row)>::type;
    auto it = j.find(row.key);
    if (it == j.end()) return;
    if constexpr (HasFields<T>)
      fields_from_json(*it, c.*(row.member));
    else
      it->get_to(c.*(row.member));
  });
}

// ---- completeness: every member of C has a row ------------------------------------
namespace detail {
struct AnyInit {
  template <class T>
  operator T() const;  // unevaluated only
};
template <class T, size_t... I>
constexpr bool brace_initializable(std::index_sequence<I...>) {
  return requires { T{(void(I), AnyInit{})...}; };
}
template <class T, size_t N = 0>
constexpr size_t aggregate_members() {
  if constexpr (brace_initializable<T>(std::make_index_sequence<N + 1>{}))
    return aggregate_members<T, N + 1>();
  else
    return N;
}
}  // namespace detail

// The number of members of the aggregate T (counted by aggregate initialisation).
template <class T>
constexpr size_t member_count() {
  static_assert(std::is_aggregate_v<T>, "field tables are for aggregate config structs");
  return detail::aggregate_members<T>();
}

// True when C's table has one row per member and `extra` names the members that
// are deliberately not fields (bookkeeping, e.g. RunConfig::given_flags).
template <class C>
constexpr bool fields_complete(size_t extra = 0) {
  return member_count<C>() == row_count<C>() + extra;
}

}  // namespace vm
