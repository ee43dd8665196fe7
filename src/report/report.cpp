#include "report/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "common/files.h"
#include "common/util.h"

namespace dmc::report {
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {
std::string num(double v, int prec = 3) {
  std::ostringstream os;
  os << std::setprecision(prec) << v;
  return os.str();
}
std::string esc(const std::string& s) {
  std::string o;
  for (char ch : s) {
    if (ch == '<')
      o += "&lt;";
    else if (ch == '>')
      o += "&gt;";
    else if (ch == '&')
      o += "&amp;";
    else
      o += ch;
  }
  return o;
}
}  // namespace

std::string line_chart_svg(const std::string& title, const std::string& ylabel, const std::vector<Series>& series) {
  const double W = 720, H = 400, L = 70, R = 160, T = 40, B = 50;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto& s : series)
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.y[i])) continue;
      x0 = std::min(x0, s.x[i]);
      x1 = std::max(x1, s.x[i]);
      y0 = std::min(y0, s.y[i]);
      y1 = std::max(y1, s.y[i]);
    }
  if (x0 > x1) {
    x0 = 0;
    x1 = 1;
    y0 = 0;
    y1 = 1;
  }
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) {
    y1 = y0 + 0.5;
    y0 -= 0.5;
  }
  const double pad = 0.05 * (y1 - y0);
  y0 -= pad;
  y1 += pad;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return H - B - (y - y0) / (y1 - y0) * (H - T - B); };
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
     << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
     << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
     << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << esc(title) << "</text>\n"
     << "<line x1=\"" << L << "\" y1=\"" << H - B << "\" x2=\"" << W - R << "\" y2=\"" << H - B
     << "\" stroke=\"black\"/>\n"
     << "<line x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n";
  for (int i = 0; i <= 5; ++i) {
    const double yv = y0 + (y1 - y0) * i / 5, xv = x0 + (x1 - x0) * i / 5;
    os << "<text x=\"" << L - 6 << "\" y=\"" << py(yv) + 4 << "\" text-anchor=\"end\">" << num(yv) << "</text>\n"
       << "<line x1=\"" << L << "\" y1=\"" << py(yv) << "\" x2=\"" << W - R << "\" y2=\"" << py(yv)
       << "\" stroke=\"#ddd\"/>\n"
       << "<text x=\"" << px(xv) << "\" y=\"" << H - B + 18 << "\" text-anchor=\"middle\">" << num(xv, 4)
       << "</text>\n";
  }
  os << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 10 << "\" text-anchor=\"middle\">step</text>\n"
     << "<text x=\"16\" y=\"" << (T + H - B) / 2 << "\" transform=\"rotate(-90 16 " << (T + H - B) / 2
     << ")\" text-anchor=\"middle\">" << esc(ylabel) << "</text>\n";
  int k = 0;
  for (const auto& s : series) {
    os << "<polyline fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"1.8\" points=\"";
    for (size_t i = 0; i < s.x.size(); ++i)
      if (std::isfinite(s.y[i])) os << px(s.x[i]) << "," << py(s.y[i]) << " ";
    os << "\"/>\n";
    if (s.x.size() == 1)
      os << "<circle cx=\"" << px(s.x[0]) << "\" cy=\"" << py(s.y[0]) << "\" r=\"3\" fill=\"" << s.color << "\"/>\n";
    os << "<rect x=\"" << W - R + 12 << "\" y=\"" << T + 18 * k << "\" width=\"14\" height=\"4\" fill=\"" << s.color
       << "\"/>"
       << "<text x=\"" << W - R + 32 << "\" y=\"" << T + 18 * k + 6 << "\">" << esc(s.name) << "</text>\n";
    ++k;
  }
  os << "</svg>\n";
  return os.str();
}

std::string heatmap_svg(const std::string& title, const std::vector<std::vector<double>>& v, const HeatmapLabels& lb) {
  const size_t rows = v.size(), cols = rows ? v[0].size() : 0;
  const double cell = std::max(8.0, std::min(40.0, 640.0 / std::max<size_t>(1, std::max(rows, cols))));
  const double L = 60, T = 40, W = L + cols * cell + 120, H = T + rows * cell + 50;
  double lo = 1e300, hi = -1e300;
  for (const auto& r : v)
    for (double x : r) {
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
  if (lb.hi > lb.lo) {
    lo = lb.lo;
    hi = lb.hi;
  }
  if (!(hi > lo)) {
    hi = lo + 1;
  }
  auto row_label = [&](size_t r) { return r < lb.rows.size() ? lb.rows[r] : "L" + std::to_string(r); };
  auto col_label = [&](size_t c) { return c < lb.cols.size() ? lb.cols[c] : std::to_string(c); };
  auto color = [&](double x) {  // white -> dark blue
    const double t = (x - lo) / (hi - lo);
    const int r = (int)(255 * (1 - 0.85 * t)), g = (int)(255 * (1 - 0.65 * t)), b = (int)(255 * (1 - 0.25 * t));
    std::ostringstream os;
    os << "rgb(" << r << "," << g << "," << b << ")";
    return os.str();
  };
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
     << "\" font-family=\"sans-serif\" font-size=\"11\">\n"
     << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
     << "<text x=\"" << W / 2 << "\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">" << esc(title) << "</text>\n";
  for (size_t r = 0; r < rows; ++r) {
    os << "<text x=\"" << L - 6 << "\" y=\"" << T + r * cell + cell / 2 + 4 << "\" text-anchor=\"end\">"
       << esc(row_label(r)) << "</text>\n";
    for (size_t c = 0; c < cols; ++c) {
      os << "<rect x=\"" << L + c * cell << "\" y=\"" << T + r * cell << "\" width=\"" << cell << "\" height=\"" << cell
         << "\" fill=\"" << color(v[r][c]) << "\" stroke=\"white\"><title>" << esc(lb.row_name) << " "
         << esc(row_label(r)) << ", " << esc(lb.col_name) << " " << esc(col_label(c)) << ": " << num(v[r][c])
         << "</title></rect>\n";
      if (cell >= 28)
        os << "<text x=\"" << L + c * cell + cell / 2 << "\" y=\"" << T + r * cell + cell / 2 + 4
           << "\" text-anchor=\"middle\" font-size=\"9\">" << num(v[r][c], 2) << "</text>\n";
    }
  }
  for (size_t c = 0; c < cols; ++c)
    os << "<text x=\"" << L + c * cell + cell / 2 << "\" y=\"" << T + rows * cell + 14 << "\" text-anchor=\"middle\">"
       << esc(col_label(c)) << "</text>\n";
  os << "<text x=\"" << L + cols * cell / 2 << "\" y=\"" << T + rows * cell + 32 << "\" text-anchor=\"middle\">"
     << esc(lb.col_axis) << "</text>\n";
  const double lx = L + cols * cell + 20;
  for (int i = 0; i <= 10; ++i) {
    const double x = lo + (hi - lo) * (10 - i) / 10.0;
    os << "<rect x=\"" << lx << "\" y=\"" << T + i * 14 << "\" width=\"16\" height=\"14\" fill=\"" << color(x) << "\"/>"
       << "<text x=\"" << lx + 22 << "\" y=\"" << T + i * 14 + 11 << "\">" << num(x) << "</text>\n";
  }
  os << "</svg>\n";
  return os.str();
}

std::string make_report(const ReportOptions& o) {
  DMC_CHECK(!o.runs.empty(), "report: no run directories given");
  make_dirs(o.out);
  Series loss{"train loss", "#1f77b4", {}, {}}, eval{"validation loss", "#d62728", {}, {}};
  Series cr{"achieved CR", "#2ca02c", {}, {}}, target{"target CR", "#7f7f7f", {}, {}};
  std::vector<std::vector<double>> heat;
  std::ostringstream sum;
  sum << "# dmc report\n\n| run | steps | final train loss | final val loss | val ppl | target CR | achieved CR |\n"
      << "|---|---|---|---|---|---|---|\n";
  double offset = 0;
  for (const auto& run : o.runs) {
    const std::string path = run + "/metrics.jsonl";
    std::ifstream in(path);
    if (!in) fail(path, ": cannot be read (is '", run, "' a run directory?)");
    double last_step = 0, last_loss = NAN, last_eval = NAN, last_target = NAN, last_cr = NAN;
    int64_t line_no = 0;
    for (std::string line; std::getline(in, line);) {
      ++line_no;
      if (line.empty()) continue;
      json j;
      try {
        j = json::parse(line);
      } catch (const std::exception& e) {
        fail(path, ":", line_no, ": not valid JSON (", e.what(), ")");
      }
      const double step = j.value("step", 0.0);
      last_step = std::max(last_step, step);
      if (j.contains("loss")) {
        loss.x.push_back(offset + step);
        loss.y.push_back(j["loss"]);
        last_loss = j["loss"];
      }
      if (j.contains("eval_loss")) {
        eval.x.push_back(offset + step);
        eval.y.push_back(j["eval_loss"]);
        last_eval = j["eval_loss"];
      }
      if (j.contains("cr")) {
        cr.x.push_back(offset + step);
        cr.y.push_back(j["cr"]);
        last_cr = j["cr"];
      }
      if (j.contains("target_cr")) {
        target.x.push_back(offset + step);
        target.y.push_back(j["target_cr"]);
        last_target = j["target_cr"];
      }
      if (j.contains("cr_per_head")) heat = j["cr_per_head"].get<std::vector<std::vector<double>>>();
    }
    sum << "| " << run << " | " << (int64_t)last_step << " | " << num(last_loss, 4) << " | " << num(last_eval, 4)
        << " | " << num(std::exp(last_eval), 4) << " | " << num(last_target) << " | " << num(last_cr) << " |\n";
    offset += last_step;
  }
  std::vector<Series> ls{loss};
  if (!eval.x.empty()) ls.push_back(eval);
  write_file_atomic(o.out + "/loss.svg", line_chart_svg("loss", "cross-entropy", ls));
  if (!cr.x.empty())
    write_file_atomic(o.out + "/ratio.svg", line_chart_svg("KV-cache compression ratio", "CR", {target, cr}));
  if (!heat.empty()) {
    write_file_atomic(o.out + "/heatmap.svg", heatmap_svg("achieved compression ratio per layer and KV head", heat));
    sum << "\nPer-layer x per-head achieved ratios (last logged): heatmap.svg\n";
  }
  sum << "\nPictures: loss.svg" << (cr.x.empty() ? "" : ", ratio.svg") << (heat.empty() ? "" : ", heatmap.svg") << "\n";
  write_file_atomic(o.out + "/summary.md", sum.str());
  return sum.str();
}

}  // namespace dmc::report
