#include "config/options.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <iomanip>
#include <sstream>

#include "common/error.h"
#include "common/util.h"

namespace dmc {

namespace {
std::string norm_key(std::string k) {
  for (auto& ch : k)
    if (ch == '-') ch = '_';
  return k;
}
bool parse_bool(const std::string& v, bool* out) {
  if (v == "true" || v == "1" || v == "yes" || v == "on") {
    *out = true;
    return true;
  }
  if (v == "false" || v == "0" || v == "no" || v == "off") {
    *out = false;
    return true;
  }
  return false;
}
std::string fmt_double(double v) {
  std::ostringstream os;
  os << std::setprecision(10) << v;
  return os.str();
}
std::vector<std::string> split_list(const std::string& v) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : v) {
    if (ch == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else
      cur.push_back(ch);
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}
}  // namespace

OptionTable::OptionTable(std::string command, std::string usage)
    : command_(std::move(command)), usage_(std::move(usage)) {}

Option OptionTable::add_entry(Entry e) {
  for (const auto& x : entries_)
    if (x.key == e.key) throw std::logic_error("duplicate option " + e.key);
  entries_.push_back(std::move(e));
  return Option(this, entries_.size() - 1);
}

Option& Option::min(double v) { return bound(v, false, false); }
Option& Option::above(double v) { return bound(v, false, true); }
Option& Option::max(double v) { return bound(v, true, false); }
Option& Option::below(double v) { return bound(v, true, true); }
Option& Option::bound(double v, bool upper, bool open) {
  auto& e = t_->entries_[i_];
  (upper ? e.hi : e.lo) = v;
  (upper ? e.hi_open : e.lo_open) = open;
  return *this;
}
Option& Option::one_of(const std::vector<std::string>& values) {
  t_->entries_[i_].choices = values;
  return *this;
}

std::string OptionTable::range_text(const Entry& e) {
  if (!e.choices.empty()) {
    std::string s;
    for (size_t i = 0; i < e.choices.size(); ++i)
      s += (i == 0 ? "" : i + 1 == e.choices.size() ? " or " : ", ") + e.choices[i];
    return "one of " + s;
  }
  const bool has_lo = e.lo > -HUGE_VAL, has_hi = e.hi < HUGE_VAL;
  if (has_lo && has_hi)
    return cat("a value in ", e.lo_open ? "(" : "[", fmt_double(e.lo), ", ", fmt_double(e.hi), e.hi_open ? ")" : "]");
  if (has_lo) return cat("a value ", e.lo_open ? "> " : ">= ", fmt_double(e.lo));
  return cat("a value ", e.hi_open ? "< " : "<= ", fmt_double(e.hi));
}

void OptionTable::check_value(const Entry& e, const std::string& value, const std::string& source) const {
  if (!e.choices.empty()) {
    const auto items = e.type == Type::List ? split_list(value) : std::vector<std::string>{value};
    for (const auto& it : items)
      if (std::find(e.choices.begin(), e.choices.end(), it) == e.choices.end())
        fail(source, ": key '", e.key, "': '", it, "' is not valid, expected ", range_text(e));
    return;
  }
  if (!e.number) return;
  const double v = e.number();
  const bool ok = std::isfinite(v) && (e.lo_open ? v > e.lo : v >= e.lo) && (e.hi_open ? v < e.hi : v <= e.hi);
  if (!ok) fail(source, ": key '", e.key, "': ", value, " is out of range, expected ", range_text(e));
}

Option OptionTable::add(const std::string& key, int64_t* f, const std::string& help, bool required) {
  return add_entry({key, help, Type::Int, required, false,
                    [f, key](const std::string& v, const std::string& src) {
                      size_t pos = 0;
                      long long x = 0;
                      try {
                        x = std::stoll(v, &pos);
                      } catch (...) {
                        pos = 0;
                      }
                      if (pos == 0 || pos != v.size())
                        fail(src, ": key '", key, "': expected an integer, got '", v, "'");
                      *f = x;
                    },
                    [f] { return std::to_string(*f); }, [f] { return (double)*f; }});
}

Option OptionTable::add(const std::string& key, double* f, const std::string& help, bool required) {
  return add_entry({key, help, Type::Float, required, false,
                    [f, key](const std::string& v, const std::string& src) {
                      size_t pos = 0;
                      double x = 0;
                      try {
                        x = std::stod(v, &pos);
                      } catch (...) {
                        pos = 0;
                      }
                      if (pos == 0 || pos != v.size()) fail(src, ": key '", key, "': expected a number, got '", v, "'");
                      *f = x;
                    },
                    [f] { return fmt_double(*f); }, [f] { return *f; }});
}

Option OptionTable::add(const std::string& key, bool* f, const std::string& help, bool required) {
  return add_entry({key, help, Type::Bool, required, false,
                    [f, key](const std::string& v, const std::string& src) {
                      if (!parse_bool(v, f)) fail(src, ": key '", key, "': expected true or false, got '", v, "'");
                    },
                    [f] { return std::string(*f ? "true" : "false"); }});
}

Option OptionTable::add(const std::string& key, std::string* f, const std::string& help, bool required) {
  return add_entry({key, help, Type::String, required, false, [f](const std::string& v, const std::string&) { *f = v; },
                    [f] { return *f; }});
}

Option OptionTable::add_named(const std::string& key, const std::string& help, bool required,
                              std::vector<std::string> names, std::function<void(const std::string&)> assign,
                              std::function<std::string()> show) {
  Entry e{key,
          help,
          Type::String,
          required,
          false,
          [assign](const std::string& v, const std::string&) { assign(v); },
          std::move(show)};
  e.choices = std::move(names);
  return add_entry(std::move(e));
}

Option OptionTable::add(const std::string& key, std::vector<std::string>* f, const std::string& help, bool required) {
  return add_entry({key, help, Type::List, required, false,
                    [f](const std::string& v, const std::string&) { *f = split_list(v); },
                    [f] {
                      std::string s;
                      for (const auto& x : *f) s += (s.empty() ? "" : ",") + x;
                      return s;
                    }});
}

std::vector<std::string> OptionTable::keys() const {
  std::vector<std::string> k;
  for (const auto& e : entries_) k.push_back(e.key);
  return k;
}

OptionTable::Entry& OptionTable::find(const std::string& key, const std::string& source) {
  const std::string k = norm_key(key);
  for (auto& e : entries_)
    if (e.key == k) return e;
  const std::string guess = closest(k, keys());
  if (!guess.empty()) fail(source, ": unknown key '", key, "' for 'dmc ", command_, "' (did you mean '", guess, "'?)");
  fail(source, ": unknown key '", key, "' for 'dmc ", command_, "' (see dmc ", command_, " --help)");
}

bool OptionTable::is_set(const std::string& key) const {
  for (const auto& e : entries_)
    if (e.key == key) return e.set;
  return false;
}

void OptionTable::set(const std::string& key, const std::string& value, const std::string& source) {
  Entry& e = find(key, source);
  if (!e.choices.empty()) check_value(e, value, source);  // names: before the field is touched
  e.assign(value, source);
  if (e.choices.empty()) check_value(e, value, source);  // ranges: of the parsed number
  e.set = true;
}

void OptionTable::load_yaml(const std::string& path) {
  const std::string text = read_file(path, "config file");
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& ex) {
    fail(path, ": not valid YAML (", ex.what(), ")");
  }
  if (root.IsNull()) return;
  if (!root.IsMap()) fail(path, ": expected a YAML mapping of key: value");
  // every key and every value must be a scalar (a list's items too): anything else is an error naming the file,
  // the key and the line, never yaml-cpp's own exception
  auto scalar = [&](const YAML::Node& x, const std::string& key, const char* what) {
    if (!x.IsScalar())
      fail(path, ":", x.Mark().line + 1, ": key '", key, "': ", what, " must be a plain value, got ",
           x.IsMap()        ? "a mapping"
           : x.IsSequence() ? "a list"
                            : "nothing");
    return x.Scalar();
  };
  std::function<void(const YAML::Node&, const std::string&)> walk = [&](const YAML::Node& n,
                                                                        const std::string& prefix) {
    for (auto it = n.begin(); it != n.end(); ++it) {
      const std::string key = prefix + scalar(it->first, prefix + "?", "a key");
      const YAML::Node v = it->second;  // a copy: it->second is a temporary of the iterator
      if (v.IsMap()) {
        walk(v, key + ".");
      } else if (v.IsSequence()) {
        Entry& e = find(key, path);
        if (e.type != Type::List) fail(path, ": key '", key, "': expected a single value, got a list");
        std::string joined;
        for (const auto& x : v) joined += (joined.empty() ? "" : ",") + scalar(x, key, "a list item");
        set(key, joined, path);
      } else if (v.IsNull()) {
        find(key, path);  // known key with no value: keep the default
      } else {
        set(key, scalar(v, key, "the value"), path);
      }
    }
  };
  walk(root, "");
}

void OptionTable::parse(const std::vector<std::string>& args) {
  size_t next_positional = 0;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") throw HelpRequested{help()};
    if (a == "--config") {
      if (i + 1 >= args.size()) fail("command line: --config needs a file");
      load_yaml(args[++i]);
      continue;
    }
    if (a.rfind("--config=", 0) == 0) {
      load_yaml(a.substr(9));
      continue;
    }
    if (a.rfind("--", 0) == 0) {
      std::string body = a.substr(2);
      auto eq = body.find('=');
      if (eq != std::string::npos) {
        set(body.substr(0, eq), body.substr(eq + 1), "command line");
        continue;
      }
      std::string k = norm_key(body);
      if (k.rfind("no_", 0) == 0) {
        bool known_neg = false;
        for (const auto& e : entries_)
          if (e.key == k.substr(3) && e.type == Type::Bool) known_neg = true;
        if (known_neg) {
          set(k.substr(3), "false", "command line");
          continue;
        }
      }
      Entry& e = find(k, "command line");
      if (e.type == Type::Bool &&
          (i + 1 >= args.size() || args[i + 1].rfind("--", 0) == 0 || args[i + 1].find('=') != std::string::npos)) {
        set(k, "true", "command line");
        continue;
      }
      if (e.type == Type::Bool) {
        bool b;
        if (!parse_bool(args[i + 1], &b)) {
          set(k, "true", "command line");
          continue;
        }
      }
      if (i + 1 >= args.size()) fail("command line: --", body, " needs a value");
      set(k, args[++i], "command line");
      continue;
    }
    auto eq = a.find('=');
    if (eq != std::string::npos && eq > 0) {
      set(a.substr(0, eq), a.substr(eq + 1), "command line");
      continue;
    }
    if (next_positional < positional_.size()) {
      set(positional_[next_positional++], a, "command line");
      continue;
    }
    fail("command line: unexpected argument '", a, "' for 'dmc ", command_, "' (see dmc ", command_, " --help)");
  }
  for (const auto& e : entries_)
    if (e.required && !e.set) fail("command line: 'dmc ", command_, "' needs --", e.key, " (", e.help, ")");
  for (const auto& fn : checks_) fn();
}

std::string OptionTable::to_yaml() const {
  std::ostringstream os;
  os << "# dmc " << command_ << ": resolved config\n";
  for (const auto& e : entries_) {
    std::string v = e.show();
    if (e.type == Type::List) {
      os << e.key << ": [";
      auto items = split_list(v);
      for (size_t i = 0; i < items.size(); ++i) {
        YAML::Emitter em;
        em << YAML::DoubleQuoted << items[i];
        os << (i ? ", " : "") << em.c_str();
      }
      os << "]\n";
      continue;
    }
    if (e.type == Type::String) {
      YAML::Emitter em;
      em << v;
      v = em.c_str();
      if (v.empty()) v = "\"\"";
    }
    os << e.key << ": " << v << "\n";
  }
  return os.str();
}

std::string OptionTable::help() const {
  std::ostringstream os;
  os << "usage: " << usage_ << "\n\noptions (also settable from YAML with --config FILE, or as key=value):\n";
  for (const auto& e : entries_) {
    std::string flag = "--" + e.key;
    for (auto& ch : flag)
      if (ch == '_') ch = '-';
    std::string def = e.show();
    // a flag as wide as the column gets its text on the next line, never run into it
    if (flag.size() + 1 >= 28)
      os << "  " << flag << "\n" << std::string(30, ' ') << e.help;
    else
      os << "  " << std::left << std::setw(28) << flag << e.help;
    if (e.required)
      os << " (required)";
    else if (!def.empty())
      os << " [default: " << def << "]";
    if (!e.choices.empty() || e.lo > -HUGE_VAL || e.hi < HUGE_VAL) os << " {" << range_text(e) << "}";
    os << "\n";
  }
  return os.str();
}

}  // namespace dmc
