// Long-context task samples (see tasks.h). Every random choice of a sample is drawn before its haystack is sized,
// so the sizing (a binary search over the haystack size) changes only how much filler surrounds the needles.
#include "inference/tasks.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <random>

#include "common/error.h"
#include "common/util.h"
#include "tokenizer/chat.h"

namespace dmc {

namespace {
const char* kGarbage = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
const char* kPasskeyTask =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz you "
    "about the important information there.";

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
  return out;
}

uint64_t mix(uint64_t h, const std::string& s) {
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  return h;
}

std::string uuid4(std::mt19937_64& rng) {
  static const char* hex = "0123456789abcdef";
  std::string u;
  for (int i = 0; i < 32; ++i) {
    int v = (int)(rng() & 15);
    if (i == 12) v = 4;            // version 4
    if (i == 16) v = 8 | (v & 3);  // variant 10xx
    u += hex[v];
    if (i == 7 || i == 11 || i == 15 || i == 19) u += '-';
  }
  return u;
}

// The essay sentences: every document split after ". ", "! " or "? " (and at newlines), whitespace kept with the
// sentence it ends.
std::vector<std::string> sentences_of(const std::vector<std::string>& docs) {
  std::vector<std::string> out;
  for (const auto& d : docs) {
    size_t b = 0;
    for (size_t i = 0; i + 1 < d.size(); ++i) {
      const bool end = ((d[i] == '.' || d[i] == '!' || d[i] == '?') && d[i + 1] == ' ') || d[i] == '\n';
      if (end) {
        size_t e = i + 1;
        while (e < d.size() && (d[e] == ' ' || d[e] == '\n')) ++e;
        if (e > b) out.push_back(d.substr(b, e - b));
        b = e;
        i = e - 1;
      }
    }
    if (b < d.size()) out.push_back(d.substr(b) + " ");
  }
  return out;
}

struct Plan {                                 // what a sample's prompt is made of, all random choices made
  std::function<std::string(int64_t)> build;  // haystack size -> prompt
  int64_t max_new = 0;
  bool stop_newline = false;
  std::vector<std::string> expected;
  double depth = 0;
};
}  // namespace

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> n = {"passkey",         "niah_single_1",   "niah_single_2",
                                             "niah_single_3",   "niah_multikey_1", "niah_multikey_2",
                                             "niah_multivalue", "niah_multiquery", "vt"};
  return n;
}

const std::vector<std::string>& task_adjectives() {
  static const std::vector<std::string> w = {
      "able",     "ancient", "angry",  "bitter", "black",  "bold",   "brave",   "bright", "broad",  "busy",    "calm",
      "careful",  "cheap",   "clean",  "clever", "cold",   "cool",   "curious", "damp",   "dark",   "deep",    "dry",
      "eager",    "early",   "easy",   "empty",  "fair",   "famous", "fancy",   "fast",   "fierce", "flat",    "fresh",
      "friendly", "gentle",  "giant",  "glad",   "golden", "grand",  "green",   "happy",  "hard",   "heavy",   "hidden",
      "high",     "hollow",  "honest", "huge",   "humble", "icy",    "jolly",   "kind",   "large",  "lazy",    "light",
      "little",   "lively",  "lonely", "long",   "loud",   "lucky",  "mighty",  "modern", "narrow", "neat",    "noble",
      "odd",      "old",     "pale",   "plain",  "polite", "proud",  "purple",  "quick",  "quiet",  "rapid",   "rare",
      "red",      "rich",    "rough",  "round",  "royal",  "rusty",  "sharp",   "shiny",  "short",  "shy",     "silent",
      "silver",   "simple",  "slow",   "small",  "smooth", "soft",   "solid",   "sour",   "steep",  "strange", "strong",
      "sweet",    "tall",    "tame",   "thick",  "thin",   "tiny",   "warm",    "weak",   "wet",    "white",   "wild",
      "wise",     "yellow",  "young",  "zealous"};
  return w;
}

const std::vector<std::string>& task_nouns() {
  static const std::vector<std::string> w = {
      "apple",   "arrow",   "badger",   "banana",  "barn",    "basket", "beach",  "bear",   "bell",    "bird",
      "blanket", "boat",    "bottle",   "bridge",  "brush",   "bucket", "button", "cabin",  "camel",   "candle",
      "canyon",  "castle",  "cat",      "cave",    "chair",   "cherry", "cloud",  "clock",  "coat",    "comet",
      "cookie",  "crown",   "desert",   "diamond", "dolphin", "door",   "dragon", "drum",   "eagle",   "engine",
      "falcon",  "feather", "fence",    "field",   "flower",  "forest", "fox",    "garden", "glacier", "goat",
      "guitar",  "hammer",  "harbor",   "hat",     "hill",    "horse",  "island", "jacket", "jungle",  "kettle",
      "key",     "kite",    "ladder",   "lake",    "lamp",    "lemon",  "lion",   "map",    "meadow",  "mirror",
      "monkey",  "moon",    "mountain", "needle",  "ocean",   "orange", "otter",  "owl",    "palace",  "panda",
      "pencil",  "piano",   "pillow",   "planet",  "pond",    "rabbit", "river",  "robot",  "rocket",  "saddle",
      "shell",   "ship",    "spoon",    "star",    "stone",   "storm",  "sun",    "tiger",  "tower",   "train",
      "tree",    "tulip",   "turtle",   "valley",  "violin",  "wagon",  "whale",  "window", "wolf",    "zebra"};
  return w;
}

std::vector<TaskSample> make_task_samples(const Tokenizer& tok, const TaskOptions& o) {
  DMC_CHECK(o.samples >= 1, "samples: must be at least 1, got ", o.samples);
  DMC_CHECK(!o.tasks.empty(), "tasks: no task given (known: ", join(task_names(), ", "), ")");
  DMC_CHECK(!o.lengths.empty(), "lengths: no length given");
  for (const auto& t : o.tasks)
    DMC_CHECK(std::find(task_names().begin(), task_names().end(), t) != task_names().end(), "tasks: unknown task '", t,
              "' (known: ", join(task_names(), ", "), ")");
  for (int64_t L : o.lengths) DMC_CHECK(L >= 64, "lengths: ", L, " tokens is too short (at least 64)");
  const std::vector<std::string> essay = sentences_of(o.essays);
  auto tokens = [&](const std::string& s) { return (int64_t)tok.encode(s, /*add_bos=*/true).size(); };
  // input + answer prefix, through the chat template when asked
  auto wrap = [&](const std::string& input, const std::string& prefix) {
    if (!o.chat) return input + prefix;
    return apply_chat(tok, ChatFormat::Auto, "", input).text + prefix.substr(prefix.find_first_not_of(' '));
  };
  std::vector<TaskSample> out;
  for (const std::string& task : o.tasks) {
    const bool needs_essay = task == "niah_single_2" || task == "niah_single_3" || task == "niah_multikey_1" ||
                             task == "niah_multivalue" || task == "niah_multiquery";
    if (needs_essay)
      DMC_CHECK(essay.size() >= 8, "task ", task, ": needs essay text for its haystack (--haystack FILE or held-out ",
                "documents), got ", essay.size(), " sentences");
    for (int64_t L : o.lengths) {
      // one sample from its seed alone; `guess` (a haystack size) only says where the size search starts
      auto make = [&](int64_t i, int64_t guess, int64_t* found) {
        TaskSample s;
        s.task = task;
        s.length = L;
        s.index = i;
        s.seed = mix(mix(o.seed * 0x9E3779B97F4A7C15ULL + 1469598103934665603ULL, task), std::to_string(L)) ^
                 (uint64_t)i * 0xD1B54A32D192ED03ULL;
        std::mt19937_64 rng(s.seed);
        const double depth = o.samples == 1 ? 0.5 : (double)i / (double)(o.samples - 1);
        auto key = [&] {
          return task_adjectives()[rng() % task_adjectives().size()] + "-" + task_nouns()[rng() % task_nouns().size()];
        };
        auto number = [&] { return std::to_string(1000000 + rng() % 9000000); };
        Plan p;
        p.depth = depth;
        if (task == "passkey") {
          const std::string k = std::to_string(1 + rng() % 50000);
          const std::string info = "The pass key is " + k + ". Remember it. " + k + " is the pass key.";
          p.expected = {k};
          p.max_new = 10;
          p.build = [=](int64_t n_chars) {
            std::string g;
            while ((int64_t)g.size() < n_chars) g += (g.empty() ? "" : " ") + std::string(kGarbage);
            g.resize(n_chars);
            const size_t cut = (size_t)(depth * (double)n_chars);
            const std::string input =
                std::string(kPasskeyTask) + "\n" + g.substr(0, cut) + "\n" + info + "\n" + g.substr(cut) + "\n";
            return o.chat ? wrap(input + "What is the pass key?", " The pass key is")
                          : input + "What is the pass key? The pass key is";
          };
        } else if (task == "vt") {
          std::vector<std::string> vars;
          while (vars.size() < 5) {
            std::string v;
            for (int c = 0; c < 5; ++c) v += (char)('A' + rng() % 26);
            if (std::find(vars.begin(), vars.end(), v) == vars.end()) vars.push_back(v);
          }
          const std::string value = std::to_string(10000 + rng() % 90000);
          std::vector<std::string> lines = {"VAR " + vars[0] + " = " + value};
          for (int h = 1; h < 5; ++h) lines.push_back("VAR " + vars[h] + " = VAR " + vars[h - 1]);
          p.expected = vars;
          p.max_new = 30;
          p.stop_newline = true;
          p.build = [=](int64_t n_lines) {
            std::string ctx;
            // the 5 assignments at evenly spread lines of the noise (in chain order)
            for (int64_t l = 0, next = 0; l <= n_lines; ++l) {
              while (next < 5 && l == (n_lines * next) / 5) ctx += lines[next++] + "\n";
              if (l < n_lines) ctx += std::string(kGarbage) + "\n";
            }
            return wrap(
                ctx + "Question: Find all variables that are assigned the value " + value + " in the text above.",
                " Answer: According to the chain(s) of variable assignment in the text above, 5 variables are "
                "assigned the value " +
                    value + ", they are: ");
          };
        } else {  // RULER NIAH
          const bool uuids = task == "niah_single_3";
          const int n_keys = task == "niah_multikey_1" || task == "niah_multiquery" ? 4 : 1;
          const int n_values = task == "niah_multivalue" ? 4 : 1;
          const int n_query = task == "niah_multiquery" ? 4 : 1;
          std::vector<std::string> keys, needles, queried;
          while ((int)keys.size() < n_keys) {
            const std::string k = key();
            if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
          }
          std::string T = uuids ? "uuids" : "numbers";
          const bool single = n_values == 1 && n_query == 1;
          std::string tmpl =
              "Some special magic {T} are hidden within the following text. Make sure to memorize it. I will quiz you "
              "about the {T} afterwards.\n{context}\nWhat are all the special magic {T} for {query} mentioned in the "
              "provided text?";
          std::string prefix = " The special magic {T} for {query} mentioned in the provided text are";
          if (single) {
            for (auto* s2 : {&tmpl, &prefix}) {
              *s2 = replace_all(*s2, "Some", "A");
              *s2 = replace_all(*s2, "are all", "is");
              *s2 = replace_all(*s2, "are", "is");
              *s2 = replace_all(*s2, "answers", "answer");
            }
            T.pop_back();
          }
          // the needles are written before the singular edit (as RULER does): they keep "numbers" / "uuids"
          const std::string tv = uuids ? "uuids" : "numbers";
          for (int k = 0; k < n_keys; ++k)
            for (int v = 0; v < (k == 0 ? n_values : 1); ++v) {
              const std::string value = uuids ? uuid4(rng) : number();
              needles.push_back("One of the special magic " + tv + " for " + keys[k] + " is: " + value + ".");
              if (k < n_query) p.expected.push_back(value);
            }
          for (int q = 0; q < n_query; ++q) queried.push_back(keys[q]);
          std::string query = queried[0];
          for (size_t q = 1; q < queried.size(); ++q) query += (q + 1 == queried.size() ? ", and " : ", ") + queried[q];
          // multikey_1: the queried needle at the sample's depth, the distractors spread over the rest
          std::vector<double> depths(needles.size(), depth);
          for (size_t k = 1; k < needles.size(); ++k) depths[k] = std::fmod(depth + (double)k / needles.size(), 1.0);
          std::vector<size_t> order(needles.size());
          for (size_t k = 0; k < order.size(); ++k) order[k] = k;
          std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return depths[a] < depths[b]; });
          const size_t e0 = essay.empty() ? 0 : rng() % essay.size();  // where the essay text starts
          // multikey_2: distractor needles as the haystack, drawn once (the sizing takes a prefix of them)
          std::vector<std::string> distract;
          if (task == "niah_multikey_2")
            for (int d = 0; d < 4096; ++d) {
              const std::string k = key();
              if (k == keys[0]) continue;
              distract.push_back("One of the special magic " + tv + " for " + k + " is: " + number() + ".");
            }
          p.expected.shrink_to_fit();
          p.max_new = 128;
          p.stop_newline = true;
          p.build = [=](int64_t n) {
            std::vector<std::string> hay;  // units: lines (noise, needles) or sentences (essay)
            if (task == "niah_single_1") {
              hay.assign(n, std::string(kGarbage) + "\n");
            } else if (task == "niah_multikey_2") {
              for (int64_t d = 0; d < n; ++d) hay.push_back(distract[d % distract.size()] + "\n");
            } else {
              for (int64_t d = 0; d < n; ++d) hay.push_back(essay[(e0 + d) % essay.size()]);
            }
            const bool lines = task == "niah_single_1" || task == "niah_multikey_2";
            std::string ctx;
            size_t next = 0;
            for (int64_t u = 0; u <= n; ++u) {
              while (next < order.size() && u == (int64_t)(depths[order[next]] * (double)n + 0.5))
                ctx += needles[order[next++]] + (lines ? "\n" : " ");
              if (u < n) ctx += hay[u];
            }
            while (next < order.size()) ctx += needles[order[next++]] + (lines ? "\n" : " ");
            while (!ctx.empty() && (ctx.back() == '\n' || ctx.back() == ' ')) ctx.pop_back();
            std::string input = replace_all(replace_all(tmpl, "{T}", T), "{query}", query);
            input = replace_all(input, "{context}", ctx);
            return wrap(input, replace_all(replace_all(prefix, "{T}", T), "{query}", query));
          };
        }
        // size: the largest haystack whose prompt + output budget fits L
        auto fits = [&](int64_t n) { return tokens(p.build(n)) + p.max_new <= L; };
        if (!fits(0))
          fail("task ", task, ": a length of ", L, " tokens cannot hold even its fixed text and ", p.max_new,
               " output tokens");
        int64_t lo = 0, hi = std::max<int64_t>(guess > 0 ? guess * 11 / 10 + 8 : 64, 1);
        while (fits(hi)) {
          lo = hi;
          hi *= 2;
        }
        while (hi - lo > 1) {
          const int64_t mid = lo + (hi - lo) / 2;
          (fits(mid) ? lo : hi) = mid;
        }
        if (needs_essay && lo > (int64_t)essay.size())
          fail("task ", task, ": the haystack text (", essay.size(), " sentences) is too short for a length of ", L,
               " tokens (it needs about ", lo, "); give more held-out text");
        *found = lo;
        s.prompt = p.build(lo);
        s.prompt_tokens = tokens(s.prompt);
        s.max_new_tokens = p.max_new;
        s.stop_at_newline = p.stop_newline;
        s.expected = p.expected;
        s.depth = p.depth;
        return s;
      };
      // sample 0 first, then the rest on every core, each search starting at sample 0's size (the samples are the
      // same whatever the thread count)
      std::vector<TaskSample> group(o.samples);
      int64_t n0 = 0;
      group[0] = make(0, 0, &n0);
      parallel_for(o.samples - 1, o.threads, [&](int64_t k) {
        int64_t unused = 0;
        group[k + 1] = make(k + 1, n0, &unused);
      });
      for (auto& s : group) out.push_back(std::move(s));
    }
  }
  return out;
}

double score_task(const TaskSample& s, const std::string& output) {
  if (s.task == "passkey") {
    size_t b = 0;
    while (b < output.size() && !std::isdigit((unsigned char)output[b])) ++b;
    size_t e = b;
    while (e < output.size() && std::isdigit((unsigned char)output[e])) ++e;
    return b < output.size() && output.substr(b, e - b) == s.expected.at(0) ? 1.0 : 0.0;
  }
  auto lower = [](std::string x) {
    for (auto& c : x) c = (char)std::tolower((unsigned char)c);
    return x;
  };
  const std::string out = lower(output);
  double hit = 0;
  for (const auto& v : s.expected) hit += out.find(lower(v)) != std::string::npos;
  return s.expected.empty() ? 0.0 : hit / (double)s.expected.size();
}

}  // namespace dmc
