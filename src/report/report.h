// `dmc report RUN_DIR [RUN_DIR ...] --out DIR`: reads each run's metrics.jsonl (stages in the order given, steps
// laid end to end) and writes
//   loss.svg      training loss (and validation loss) against step
//   ratio.svg     target and achieved compression ratio against step (DMC stages)
//   heatmap.svg   achieved compression ratio per layer (rows) x KV head (columns), last logged values
//   summary.md    per run: steps, final loss, final validation loss/ppl, target and achieved CR
#pragma once
#include <string>
#include <vector>

namespace dmc::report {

struct ReportOptions {
  std::vector<std::string> runs;
  std::string out;
};

// Returns the summary text (also written to out/summary.md).
std::string make_report(const ReportOptions& o);

// SVG helpers (exposed for tests).
struct Series {
  std::string name, color;
  std::vector<double> x, y;
};
std::string line_chart_svg(const std::string& title, const std::string& ylabel, const std::vector<Series>& series);
// Rows x columns of values; labels default to the per-layer / per-KV-head ratio map ("L0".., 0.., "KV head").
struct HeatmapLabels {
  std::vector<std::string> rows, cols;  // empty: "L<r>" and "<c>"
  std::string col_axis = "KV head", row_name = "layer", col_name = "head";
  double lo = 0, hi = 0;  // colour range (lo < hi: fixed, e.g. 0-100 for accuracy); else the values' range
};
std::string heatmap_svg(const std::string& title, const std::vector<std::vector<double>>& values,
                        const HeatmapLabels& labels = {});

}  // namespace dmc::report
