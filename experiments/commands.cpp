#include "experiments/commands.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>

#include "core/tensor.h"

namespace vm::cli {

namespace {
struct SubState {
  Runner run;
  std::string config;  // --config FILE
  bool dump = false;   // --dump-config
  std::vector<std::string> required;
};
std::map<CLI::App*, std::unique_ptr<SubState>>& subs() {
  static std::map<CLI::App*, std::unique_ptr<SubState>> r;
  return r;
}

const CLI::App* find_sub(const CLI::App& app, const std::string& name) {
  for (const CLI::App* s : app.get_subcommands([](const CLI::App*) { return true; }))
    if (s->get_name() == name) return s;
  return nullptr;
}

bool is_number(const std::string& s) {
  if (s.empty()) return false;
  char* end = nullptr;
  std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size();
}

std::string toml_value(const std::string& v) {
  if (is_number(v) || v == "true" || v == "false") return v;
  std::string q = "\"";
  for (char ch : v) {
    if (ch == '"' || ch == '\\') q += '\\';
    q += ch;
  }
  return q + "\"";
}

// The options a config file may set: every named option but --help and the
// two config options themselves.
bool configurable(const CLI::Option* o) {
  const std::string n = o->get_single_name();
  return !o->get_lnames().empty() && n != "help" && n != "config" && n != "dump-config";
}
}  // namespace

void add_runner(CLI::App* sub, Runner run) {
  auto st = std::make_unique<SubState>();
  st->run = std::move(run);
  sub->add_option("--config", st->config,
                  "TOML/INI file of option values (keys are the long option names; flags on the command line win)")
      ->group("Config files");
  sub->add_flag("--dump-config", st->dump, "print a complete config file for this command (with the values given) and exit")
      ->group("Config files");
  subs()[sub] = std::move(st);
}

void require_option(CLI::App* sub, const std::string& flag) { subs().at(sub)->required.push_back(flag); }

void apply_config_file(CLI::App* sub, const std::string& path) {
  const std::string where = "--config " + path;
  std::ifstream in(path);
  if (!in) fail(where + ": cannot read the file");
  std::vector<CLI::ConfigItem> items;
  try {
    items = CLI::ConfigTOML().from_config(in);
  } catch (const CLI::Error& e) {
    fail(where + ": " + e.what());
  }
  std::vector<std::string> siblings, keys;
  if (const CLI::App* parent = sub->get_parent())
    for (const CLI::App* s : parent->get_subcommands([](const CLI::App*) { return true; })) siblings.push_back(s->get_name());
  for (const CLI::Option* o : sub->get_options())
    if (configurable(o)) keys.push_back(o->get_single_name());
  for (const CLI::ConfigItem& item : items) {
    if (item.name == "++" || item.name == "--") continue;  // section markers
    if (!item.parents.empty()) {
      const std::string& sec = item.parents[0];
      if (sec != sub->get_name() || item.parents.size() > 1) {
        if (item.parents.size() == 1 && std::find(siblings.begin(), siblings.end(), sec) != siblings.end()) continue;
        fail(where + ": unknown section [" + item.fullname().substr(0, item.fullname().rfind('.')) +
             "] (a section names a command: [" + sub->get_name() + "])");
      }
    }
    std::string key = item.name;
    std::replace(key.begin(), key.end(), '_', '-');
    CLI::Option* opt = sub->get_option_no_throw("--" + key);
    if (!opt || !configurable(opt)) {
      std::string near = nearest(key, keys);
      fail(where + ": unknown key '" + item.name + "' for vmoer " + sub->get_name() +
           (near.empty() ? "" : " (did you mean '" + near + "'?)"));
    }
    if (opt->count() > 0) continue;  // the command line wins
    try {
      if (opt->get_expected_min() == 0) {  // a flag: key = true / false
        if (item.inputs.size() != 1) fail(where + ": key '" + item.name + "' takes true or false");
        opt->add_result(opt->get_flag_value(key, item.inputs[0]));
      } else {
        opt->add_result(item.inputs);
      }
      opt->run_callback();
    } catch (const CLI::Error& e) {
      fail(where + ": key '" + item.name + "': " + e.what());
    } catch (const Error& e) {
      fail(where + ": key '" + item.name + "': " + e.what());
    }
  }
}

std::string dump_config(CLI::App* sub) {
  std::string out = "# vmoer " + sub->get_name() + " --config FILE\n"
                    "# Keys are the long option names; a commented key shows its default.\n"
                    "# Flags given on the command line override the file.\n";
  // By group, the groups in the order --help shows them (first appearance).
  std::vector<const CLI::Option*> opts;
  std::vector<std::string> groups;
  for (const CLI::Option* o : sub->get_options()) {
    if (!configurable(o) || o->get_group().empty()) continue;
    opts.push_back(o);
    if (std::find(groups.begin(), groups.end(), o->get_group()) == groups.end()) groups.push_back(o->get_group());
  }
  std::stable_sort(opts.begin(), opts.end(), [&](const CLI::Option* a, const CLI::Option* b) {
    return std::find(groups.begin(), groups.end(), a->get_group()) < std::find(groups.begin(), groups.end(), b->get_group());
  });
  std::string group;
  for (const CLI::Option* o : opts) {
    if (o->get_group() != group) out += "\n# ---- " + (group = o->get_group()) + "\n";
    std::string desc = o->get_description();
    for (size_t p; (p = desc.find('\n')) != std::string::npos;) desc[p] = ' ';
    out += "# " + desc + "\n";
    const std::string key = o->get_single_name();
    std::string value;
    if (o->get_expected_min() == 0) {  // flag
      value = o->count() > 0 ? "true" : "false";
    } else if (o->count() > 0) {
      auto r = o->results();
      if (r.size() == 1 && o->get_expected_max() <= 1) value = toml_value(r[0]);
      else {
        value = "[";
        for (size_t i = 0; i < r.size(); ++i) value += (i ? ", " : "") + toml_value(r[i]);
        value += "]";
      }
    } else {
      std::string d = o->get_default_str();
      if (d.size() >= 2 && d.front() == '[' && d.back() == ']') {  // a vector's default: [a,b]
        std::string inner = d.substr(1, d.size() - 2), v = "[";
        size_t i = 0, n = 0;
        while (i <= inner.size() && !inner.empty()) {
          size_t j = inner.find(',', i);
          if (j == std::string::npos) j = inner.size();
          v += (n++ ? ", " : "") + toml_value(inner.substr(i, j - i));
          i = j + 1;
        }
        value = v + "]";
      } else {
        value = toml_value(d);
      }
    }
    out += (o->count() > 0 ? "" : "# ") + key + " = " + value + "\n";
  }
  return out;
}

std::string nearest(const std::string& word, const std::vector<std::string>& candidates) {
  auto dist = [](const std::string& a, const std::string& b) {  // Levenshtein, with adjacent swaps
    std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
    for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
    for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
    for (size_t i = 1; i <= a.size(); ++i)
      for (size_t j = 1; j <= b.size(); ++j) {
        d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])});
        if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    return d[a.size()][b.size()];
  };
  std::string best;
  size_t bd = (size_t)-1;
  for (const auto& c : candidates) {
    size_t dd = dist(word, c);
    if (dd < bd) bd = dd, best = c;
  }
  // A typo: at most a third of the word (and at least one edit) away.
  return bd <= std::max<size_t>(1, word.size() / 3) ? best : "";
}

std::string suggest_for(const CLI::App& app, int argc, const char* const* argv) {
  std::vector<std::string> names;
  for (const CLI::App* s : app.get_subcommands([](const CLI::App*) { return true; })) names.push_back(s->get_name());
  const CLI::App* sub = nullptr;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("-", 0) == 0) continue;
    const CLI::App* s = find_sub(app, a);
    if (!s) {
      std::string n = nearest(a, names), all;
      for (const auto& c : names) all += (all.empty() ? "" : ", ") + c;
      return "unknown command '" + a + "': " + (n.empty() ? "the commands are " + all : "did you mean 'vmoer " + n + "'?");
    }
    sub = s;
    // nested (data fetch)
    if (i + 1 < argc && argv[i + 1][0] != '-')
      if (const CLI::App* s2 = find_sub(*sub, argv[i + 1])) sub = s2, ++i;
    break;
  }
  if (!sub) return "";
  std::vector<std::string> flags;
  for (const CLI::Option* o : sub->get_options())
    for (const auto& l : o->get_lnames()) flags.push_back("--" + l);
  for (++i; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0 || a == "--") continue;
    a = a.substr(0, a.find('='));
    if (std::find(flags.begin(), flags.end(), a) != flags.end()) continue;
    std::string n = nearest(a, flags);
    return "unknown flag " + a + " of vmoer " + sub->get_name() + (n.empty() ? "" : ": did you mean " + n + "?");
  }
  return "";
}

void register_all(CLI::App& app) {
  // One line per subsystem; add yours here when its register_* exists.
  register_data_command(app);
  register_metrics_command(app);
  register_train_command(app);
  register_eval_command(app);
  register_reproduce_command(app);
  register_inspect_command(app);
}

int run_selected(CLI::App& app) {
  for (CLI::App* sub : app.get_subcommands()) {
    // nested subcommands (e.g. `data fetch`)
    if (!subs().count(sub))
      for (CLI::App* sub2 : sub->get_subcommands())
        if (subs().count(sub2)) sub = sub2;
    auto it = subs().find(sub);
    if (it == subs().end()) continue;
    SubState& st = *it->second;
    if (!st.config.empty()) apply_config_file(sub, st.config);
    if (st.dump) {
      std::printf("%s", dump_config(sub).c_str());
      return 0;
    }
    for (const auto& flag : st.required)
      if (sub->count(flag) == 0) fail(flag + ": required (on the command line or as a key of --config)");
    return st.run();
  }
  return 2;
}

}  // namespace vm::cli
