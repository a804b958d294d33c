// `dtrain plot` (declared in cli/commands.h): reads the runs' metrics and
// draws their curves (obs/plot.h).
#include <fmt/format.h>
#include <fmt/ostream.h>

#include "cli/commands.h"
#include "io/file_system.h"
#include "obs/plot.h"

namespace dtrain::cli {

int run_plot(const PlotCommandOptions& options, std::ostream& out) {
  io::FileSystem& fs = io::default_file_system();
  obs::image_format_for(options.output);  // a bad extension fails before any reading
  std::vector<obs::RunMetrics> runs;
  for (const std::string& spec : options.runs) runs.push_back(obs::read_run(fs, spec));
  obs::CurvesOptions curves;
  curves.title = options.title;
  curves.width = options.width;
  curves.height = options.height;
  obs::plot_curves(fs, options.output, runs, curves);
  fmt::print(out, "wrote {} ({} run{}", options.output, runs.size(), runs.size() == 1 ? "" : "s");
  for (const obs::RunMetrics& r : runs) {
    fmt::print(out, "; {}: up to step {} ({} reports)", r.name, r.log.steps.back().step,
               r.log.steps.size());
    if (!r.log.epochs.empty()) {
      fmt::print(out, ", test accuracy {:.2f}%", 100 * r.log.epochs.back().test_accuracy);
    }
    if (r.log.torn_last_line) fmt::print(out, ", torn last line skipped");
  }
  fmt::print(out, ")\n");
  return 0;
}

}  // namespace dtrain::cli
