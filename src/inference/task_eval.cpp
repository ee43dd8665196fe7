// Long-context task runs through the engine (see task_eval.h).
#include "inference/task_eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "common/util.h"
#include "inference/generate.h"
#include "report/report.h"

namespace dmc {
using json = nlohmann::json;

json run_task_eval(const Llama& model, const Tokenizer& tok, const std::vector<TaskSample>& samples,
                   const TaskEvalOptions& o) {
  DMC_CHECK(!samples.empty(), "eval tasks: no samples");
  DMC_CHECK(!o.policies.empty(), "eval tasks: no cache policy");
  for (double cr : o.crs) DMC_CHECK(cr > 1.0, "--cr: a compression ratio must be > 1, got ", cr);
  const auto& c = model.config;
  for (const auto& s : samples)
    DMC_CHECK(s.length <= c.max_position_embeddings, "eval tasks: length ", s.length,
              " exceeds the model's max_position_embeddings (", c.max_position_embeddings, ")");
  // the ids whose text holds a newline: a task that stops at the first newline stops after one of them
  // (newlines before any answer text do not stop: a prompt ending in a space, as vt's does, is often answered
  // "\nA, B, ..."; whitespace-only ids are not answer text)
  std::vector<int64_t> newline_ids, blank_ids;
  for (int64_t id = 0; id < tok.vocab_size(); ++id) {
    const std::string t = tok.decode({id});
    if (t.find('\n') != std::string::npos) newline_ids.push_back(id);
    if (!t.empty() && t.find_first_not_of(" \t\r\n") == std::string::npos) blank_ids.push_back(id);
  }
  std::vector<int64_t> lengths;
  for (const auto& s : samples)
    if (std::find(lengths.begin(), lengths.end(), s.length) == lengths.end()) lengths.push_back(s.length);
  // the runs: (policy, cr), cr only for the eviction baselines
  struct Run {
    CachePolicy policy;
    double cr;
    std::string name;
  };
  std::vector<Run> runs;
  for (CachePolicy p : o.policies) {
    if (evicts(p)) {
      for (double cr : o.crs) runs.push_back({p, cr, cat(cache_policy_name(p), "@", cr)});
    } else {
      DMC_CHECK(p != CachePolicy::Dmc || c.dmc.enabled,
                "eval tasks: cache policy dmc needs a DMC model (its config.json has no dmc stanza)");
      runs.push_back({p, 0.0, cache_policy_name(p)});
    }
  }
  json report = {{"runs", json::array()}, {"samples", json::array()}};
  for (const auto& s : samples)
    report["samples"].push_back({{"task", s.task},
                                 {"length", s.length},
                                 {"index", s.index},
                                 {"seed", s.seed},
                                 {"depth", s.depth},
                                 {"prompt_tokens", s.prompt_tokens},
                                 {"expected", s.expected},
                                 {"prompt_fnv", fnv1a_hex(s.prompt)},
                                 {"outputs", json::object()}});
  const int64_t total = (int64_t)(runs.size() * samples.size());
  Progress prog("eval tasks", total, o.progress ? 5.0 : 1e9);
  int64_t done = 0;
  for (const Run& r : runs) {
    json run = {{"name", r.name}, {"policy", cache_policy_name(r.policy)}, {"accuracy", json::object()}};
    if (r.cr > 0) run["cr"] = r.cr;
    if (evicts(r.policy)) {
      run["prefill_chunk"] = o.prefill_chunk;
      if (r.policy == CachePolicy::Window) run["sinks"] = o.sinks;
    }
    double seconds = 0, prefill_s = 0, decode_s = 0, cache_tokens = 0, cache_slots = 0;
    int64_t produced = 0, prompt_tokens = 0;
    std::map<std::string, std::map<int64_t, std::pair<double, int64_t>>> acc;  // task -> length -> (sum, n)
    for (int64_t L : lengths) {
      std::vector<size_t> idx;
      for (size_t i = 0; i < samples.size(); ++i)
        if (samples[i].length == L) idx.push_back(i);
      GenerateOptions g;
      g.sampling.temperature = 0;
      g.max_batch = o.max_batch;
      g.measure_cache = true;
      g.cache.policy = r.policy;
      g.cache.page_size = o.page_size;
      g.cache.sinks = o.sinks;
      g.cache.prefill_chunk = o.prefill_chunk;
      g.prefill_tokens = o.prefill_tokens;
      if (evicts(r.policy)) {
        g.cache.budget = (int64_t)std::ceil((double)L / r.cr);
        run["budget_by_length"][std::to_string(L)] = g.cache.budget;
      }
      std::vector<std::vector<int64_t>> prompts;
      g.max_new_tokens = 0;
      for (size_t i : idx) {
        prompts.push_back(tok.encode(samples[i].prompt, /*add_bos=*/true));
        g.max_new_per_prompt.push_back(samples[i].max_new_tokens);
        g.max_new_tokens = std::max(g.max_new_tokens, samples[i].max_new_tokens);
        g.stop_ids_for.push_back(samples[i].stop_at_newline);
      }
      g.stop_ids = newline_ids;
      g.leading_ids = blank_ids;
      auto t0 = std::chrono::steady_clock::now();
      GenerateResult res = generate(model, prompts, g);
      seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      prefill_s += res.prefill_seconds;
      decode_s += res.decode_seconds;
      for (const auto& p : prompts) prompt_tokens += (int64_t)p.size();
      cache_tokens += res.cache_tokens;
      cache_slots += res.cache_slots;
      for (size_t k = 0; k < idx.size(); ++k) {
        const TaskSample& s = samples[idx[k]];
        std::vector<int64_t> out = res.tokens[k];
        produced += (int64_t)out.size();
        const std::string text = tok.decode(out);
        const double score = score_task(s, text);
        report["samples"][idx[k]]["outputs"][r.name] = {{"text", text}, {"score", score}};
        auto& a = acc[s.task][L];
        a.first += score;
        a.second += 1;
        prog.update(++done, r.name);
      }
    }
    for (const auto& [task, by_len] : acc)
      for (const auto& [L, sn] : by_len) run["accuracy"][task][std::to_string(L)] = 100.0 * sn.first / sn.second;
    run["seconds"] = seconds;
    run["generated_tokens"] = produced;
    run["tokens_per_s"] = seconds > 0 ? (double)produced / seconds : 0.0;
    run["prompt_tokens"] = prompt_tokens;
    run["prefill_seconds"] = prefill_s;
    run["decode_seconds"] = decode_s;
    run["prompt_tokens_per_s"] = prefill_s > 0 ? (double)prompt_tokens / prefill_s : 0.0;
    run["cache_tokens"] = cache_tokens;  // (token, layer, KV head) entries the finished caches stood for
    run["cache_slots"] = cache_slots;    // and the slots they held
    run["achieved_cr"] = cache_slots > 0 ? cache_tokens / cache_slots : 1.0;  // what the caches held at the end
    report["runs"].push_back(run);
  }
  return report;
}

namespace {
// the entry of `arr` filed under `key` in `index`, or nullptr after appending `item` as a new one
json* existing_or_append(json& arr, std::map<std::string, size_t>& index, const std::string& key, const json& item) {
  const auto [it, fresh] = index.emplace(key, arr.size());
  if (fresh) {
    arr.push_back(item);
    return nullptr;
  }
  return &arr[it->second];
}
}  // namespace

json merge_task_reports(const std::vector<json>& reports, const std::vector<std::string>& names) {
  DMC_CHECK(!reports.empty(), "report tasks: no report given");
  json out = {{"runs", json::array()}, {"samples", json::array()}};
  std::map<std::string, size_t> at;         // run name -> index in out["runs"]
  std::map<std::string, size_t> sample_at;  // task/length/index/seed -> index in out["samples"]
  for (size_t r = 0; r < reports.size(); ++r) {
    const std::string src = r < names.size() ? names[r] : cat("report ", r + 1);
    const json& rep = reports[r];
    DMC_CHECK(rep.is_object() && rep.contains("runs") && rep["runs"].is_array() && rep.contains("samples") &&
                  rep["samples"].is_array(),
              src, ": expected an `eval tasks` JSON report (fields runs and samples)");
    for (const auto& run : rep["runs"]) {
      for (const char* f : {"name", "accuracy", "seconds", "generated_tokens", "cache_tokens", "cache_slots"})
        DMC_CHECK(run.contains(f), src, ": a run without field '", f, "'");
      const std::string name = run["name"];
      json* merged = existing_or_append(out["runs"], at, name, run);
      if (!merged) continue;
      json& m = *merged;
      for (const auto& [task, by_len] : run["accuracy"].items())
        for (const auto& [L, v] : by_len.items()) {
          DMC_CHECK(!(m["accuracy"].contains(task) && m["accuracy"][task].contains(L)), src, ": run ", name,
                    " has ", task, " at length ", L, " in two reports");
          m["accuracy"][task][L] = v;
        }
      if (run.contains("budget_by_length"))
        for (const auto& [L, b] : run["budget_by_length"].items()) m["budget_by_length"][L] = b;
      for (const char* f : {"seconds", "prefill_seconds", "decode_seconds", "cache_tokens", "cache_slots"})
        m[f] = m.value(f, 0.0) + run.value(f, 0.0);
      for (const char* f : {"generated_tokens", "prompt_tokens"})
        m[f] = m.value(f, (int64_t)0) + run.value(f, (int64_t)0);
      const double sec = m["seconds"], pre = m["prefill_seconds"], slots = m["cache_slots"];
      m["tokens_per_s"] = sec > 0 ? m["generated_tokens"].get<double>() / sec : 0.0;
      m["prompt_tokens_per_s"] = pre > 0 ? m["prompt_tokens"].get<double>() / pre : 0.0;
      m["achieved_cr"] = slots > 0 ? m["cache_tokens"].get<double>() / slots : 1.0;
    }
    // a sample (task, length, index, seed) that another job (other policies, same seed) ran too: its outputs join
    // the first copy, which must hold the same prompt
    for (const auto& s : rep["samples"]) {
      for (const char* f : {"task", "length", "index", "seed", "prompt_fnv", "outputs"})
        DMC_CHECK(s.contains(f), src, ": a sample without field '", f, "'");
      const std::string key = cat(s["task"].get<std::string>(), "/", s["length"].dump(), "/", s["index"].dump(), "/",
                                  s["seed"].dump());
      json* merged = existing_or_append(out["samples"], sample_at, key, s);
      if (!merged) continue;
      json& m = *merged;
      DMC_CHECK(m["prompt_fnv"] == s["prompt_fnv"], src, ": sample ", key,
                " has another prompt than in an earlier report (different data or haystack?)");
      for (const auto& [name, o] : s["outputs"].items()) {
        DMC_CHECK(!m["outputs"].contains(name), src, ": run ", name, " scored sample ", key, " in two reports");
        m["outputs"][name] = o;
      }
    }
  }
  return out;
}

std::map<std::string, std::string> task_heatmaps(const json& report) {
  std::map<std::string, std::string> out;
  for (const auto& run : report["runs"]) {
    const std::string name = run["name"];
    std::map<std::string, std::map<double, std::map<int64_t, std::pair<double, int64_t>>>> cells;  // task, depth, L
    for (const auto& s : report["samples"]) {
      if (!s["outputs"].contains(name)) continue;
      auto& c = cells[s["task"].get<std::string>()][s["depth"].get<double>()][s["length"].get<int64_t>()];
      c.first += s["outputs"][name]["score"].get<double>();
      c.second += 1;
    }
    for (const auto& [task, by_depth] : cells) {
      std::vector<int64_t> lens;
      for (const auto& [d, by_len] : by_depth)
        for (const auto& [L, sn] : by_len)
          if (std::find(lens.begin(), lens.end(), L) == lens.end()) lens.push_back(L);
      std::sort(lens.begin(), lens.end());
      report::HeatmapLabels lb;
      lb.col_axis = "context length (tokens)";
      lb.row_name = "depth";
      lb.col_name = "length";
      lb.lo = 0;
      lb.hi = 100;
      for (int64_t L : lens) lb.cols.push_back(std::to_string(L));
      std::vector<std::vector<double>> v;
      for (const auto& [d, by_len] : by_depth) {
        lb.rows.push_back(std::to_string((int)std::lround(d * 100)) + "%");
        std::vector<double> row;
        for (int64_t L : lens) {
          auto it = by_len.find(L);
          row.push_back(it == by_len.end() ? 0.0 : 100.0 * it->second.first / it->second.second);
        }
        v.push_back(row);
      }
      out[task + "." + name + ".svg"] =
          report::heatmap_svg(task + ", " + name + ": accuracy (%) by needle depth x length", v, lb);
    }
  }
  if (report.contains("needles")) {  // a DMC model's decisions at the needles (needle_stats.h), layer x KV head
    const json& n = report["needles"];
    report::HeatmapLabels lb;
    lb.lo = 0;
    lb.hi = 100;
    auto pct = [](const json& m) {
      auto v = m.get<std::vector<std::vector<double>>>();
      for (auto& row : v)
        for (double& x : row) x *= 100.0;
      return v;
    };
    out["needles.isolated.svg"] = report::heatmap_svg(
        cat("needle values kept in slots of their own (%), ", n["occurrences"].get<int64_t>(), " occurrences"),
        pct(n["isolated"]), lb);
    out["needles.merge_rate.svg"] =
        report::heatmap_svg("prompt tokens merged into the slot before (%), the same prompts", pct(n["merge_rate"]), lb);
  }
  return out;
}

void save_task_report(const json& report, const std::string& json_path, const std::string& heatmap_dir) {
  if (!json_path.empty()) write_file_atomic(json_path, report.dump(1) + "\n");
  if (heatmap_dir.empty()) return;
  make_dirs(heatmap_dir);
  for (const auto& [name, svg] : task_heatmaps(report)) write_file_atomic(heatmap_dir + "/" + name, svg);
}

std::string task_eval_table(const json& report) {
  std::ostringstream os;
  for (const auto& run : report["runs"]) {
    os << "\n" << run["name"].get<std::string>();
    if (run.contains("budget_by_length")) os << "  (slots a head by length: " << run["budget_by_length"].dump() << ")";
    char rate[160];
    std::snprintf(rate, sizeof rate, "  achieved CR %.2f, %.0f s: prefill %.0f prompt tokens/s, %.0f generated tokens/s\n",
                  run["achieved_cr"].get<double>(), run["seconds"].get<double>(),
                  run.value("prompt_tokens_per_s", 0.0), run["tokens_per_s"].get<double>());
    os << rate;
    std::vector<std::string> lens;
    for (const auto& [task, by_len] : run["accuracy"].items())
      for (const auto& [L, v] : by_len.items())
        if (std::find(lens.begin(), lens.end(), L) == lens.end()) lens.push_back(L);
    os << "| task |";
    for (const auto& L : lens) os << " " << L << " |";
    os << "\n|---|";
    for (size_t i = 0; i < lens.size(); ++i) os << "---|";
    os << "\n";
    for (const auto& [task, by_len] : run["accuracy"].items()) {
      os << "| " << task << " |";
      for (const auto& L : lens) {
        char buf[32];
        if (by_len.contains(L))
          std::snprintf(buf, sizeof buf, " %.1f |", by_len[L].get<double>());
        else
          std::snprintf(buf, sizeof buf, " - |");
        os << buf;
      }
      os << "\n";
    }
  }
  return os.str();
}

}  // namespace dmc
