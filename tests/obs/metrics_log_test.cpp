#include "obs/metrics_log.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "plot_test_util.h"

namespace dtrain::obs {
namespace {

using testing::begin_line;
using testing::epoch_line;
using testing::step_line;

template <class Fn>
void expect_data_error(Fn&& fn, const std::string& message) {
  try {
    fn();
    ADD_FAILURE() << "expected a DataError: " << message;
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

std::string good_run() {
  return begin_line(1000.0) + step_line(5, 2.0, 1001.0) + step_line(10, 1.0, 1002.0) +
         epoch_line(1, 0.8, 1002.5) + step_line(15, 0.5, 1003.0) + step_line(20, 0.25, 1004.0) +
         epoch_line(2, 0.9, 1004.5) +
         "{\"event\":\"end\",\"epochs\":2,\"steps\":20,\"test_accuracy\":0.9,\"time\":1004.6}\n";
}

TEST(MetricsLogTest, ReadsStepsAndEpochsOfAGoodFile) {
  const MetricsLog log = parse_metrics_log(good_run(), "run/metrics.jsonl");
  ASSERT_EQ(log.steps.size(), 4u);
  ASSERT_EQ(log.epochs.size(), 2u);
  EXPECT_EQ(log.steps[1].step, 10);
  EXPECT_EQ(log.steps[1].epoch, 1);
  EXPECT_DOUBLE_EQ(log.steps[1].loss, 1.0);
  EXPECT_DOUBLE_EQ(log.steps[1].lr, 0.1);
  EXPECT_DOUBLE_EQ(log.steps[1].time, 1002.0);
  EXPECT_EQ(log.epochs[1].epoch, 2);
  EXPECT_EQ(log.epochs[1].step, 20);
  EXPECT_DOUBLE_EQ(log.epochs[1].test_accuracy, 0.9);
  EXPECT_DOUBLE_EQ(log.start_time, 1000.0);
  EXPECT_EQ(log.begins, 1);
  EXPECT_EQ(log.replaced_points, 0);
  EXPECT_FALSE(log.torn_last_line);
}

TEST(MetricsLogTest, ToleratesATornLastLine) {
  const std::string whole = good_run();
  const std::string next = step_line(25, 0.2, 1005.0);
  // Every cut inside the last line (a run killed while writing it).
  for (size_t cut = 1; cut < next.size() - 1; ++cut) {
    const MetricsLog log = parse_metrics_log(whole + next.substr(0, cut), "m.jsonl");
    EXPECT_EQ(log.steps.size(), 4u) << "cut at " << cut;
    EXPECT_TRUE(log.torn_last_line) << "cut at " << cut;
  }
  // The complete line without its newline is read.
  const MetricsLog log = parse_metrics_log(whole + next.substr(0, next.size() - 1), "m.jsonl");
  EXPECT_EQ(log.steps.size(), 5u);
  EXPECT_FALSE(log.torn_last_line);
}

TEST(MetricsLogTest, AMalformedMiddleLineIsADataErrorWithItsLineNumber) {
  const std::string head = begin_line(1000.0) + step_line(5, 2.0, 1001.0);
  const std::string tail = step_line(10, 1.0, 1002.0);
  const std::string torn = step_line(7, 1.5, 1001.5).substr(0, 30);
  expect_data_error([&] { parse_metrics_log(head + torn + "\n" + tail, "r/metrics.jsonl"); },
                    "metrics file 'r/metrics.jsonl' line 3: not a JSON object: '" + torn + "'");
  expect_data_error([&] { parse_metrics_log(head + "[1,2]\n" + tail, "m"); },
                    "metrics file 'm' line 3: a JSON array, expected an object");
  expect_data_error([&] { parse_metrics_log(head + "{\"step\":3}\n" + tail, "m"); },
                    "metrics file 'm' line 3: no \"event\" name");
  expect_data_error(
      [&] {
        parse_metrics_log(head + "{\"event\":\"step\",\"step\":7,\"epoch\":1}\n" + tail, "m");
      },
      "metrics file 'm' line 3: step event without \"loss\"");
  expect_data_error(
      [&] {
        parse_metrics_log(head +
                              "{\"event\":\"step\",\"step\":\"7\",\"epoch\":1,\"loss\":1,"
                              "\"accuracy\":1}\n" +
                              tail,
                          "m");
      },
      "metrics file 'm' line 3: \"step\" is string, expected an integer");
  expect_data_error(
      [&] {
        parse_metrics_log(head +
                              "{\"event\":\"epoch\",\"epoch\":1,\"step\":10,\"test_loss\":0.1,"
                              "\"test_accuracy\":true}\n" +
                              tail,
                          "m");
      },
      "metrics file 'm' line 3: \"test_accuracy\" is boolean, expected a number");
}

TEST(MetricsLogTest, AFlippedByteInAMiddleLineIsReportedAtThatLine) {
  const std::string text = good_run();
  const size_t third_line = text.find('\n', text.find('\n') + 1) + 1;
  std::string flipped = text;
  flipped[third_line] = '}';  // the '{' that opens line 3
  try {
    parse_metrics_log(flipped, "m");
    ADD_FAILURE() << "expected a DataError";
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("metrics file 'm' line 3: not a JSON object", 0), 0u)
        << e.what();
  }
}

TEST(MetricsLogTest, AResumedRunKeepsTheLaterRecordOfRepeatedSteps) {
  // Killed after step 20, resumed from the checkpoint of step 10: steps 15
  // and 20 and epoch 2 are reported again, after a second "begin".
  const std::string text =
      begin_line(1000.0) + step_line(5, 2.0, 1001.0) + step_line(10, 1.0, 1002.0) +
      epoch_line(1, 0.8, 1002.5) + step_line(15, 0.5, 1003.0) + step_line(20, 0.25, 1004.0) +
      begin_line(1100.0, 10) + step_line(15, 0.6, 1101.0) + step_line(20, 0.3, 1102.0) +
      epoch_line(2, 0.91, 1102.5) + step_line(25, 0.2, 1103.0);
  const MetricsLog log = parse_metrics_log(text, "m");
  EXPECT_EQ(log.begins, 2);
  ASSERT_EQ(log.steps.size(), 5u);
  const std::vector<int64_t> steps{5, 10, 15, 20, 25};
  for (size_t i = 0; i < steps.size(); ++i) EXPECT_EQ(log.steps[i].step, steps[i]);
  EXPECT_DOUBLE_EQ(log.steps[2].loss, 0.6);
  EXPECT_DOUBLE_EQ(log.steps[2].time, 1101.0);
  EXPECT_EQ(log.replaced_points, 2);
  ASSERT_EQ(log.epochs.size(), 2u);
  EXPECT_DOUBLE_EQ(log.epochs[1].test_accuracy, 0.91);
  EXPECT_DOUBLE_EQ(log.start_time, 1000.0);
}

TEST(MetricsLogTest, ATornLineThatAResumedRunAppendedItsBeginToIsSkipped) {
  // JsonLinesWriter dumps keys in order ("epochs" before "event"); the run
  // was killed inside step 15's line and resumed from step 10.
  const std::string begin =
      "{\"epochs\":2,\"event\":\"begin\",\"start_step\":10,\"time\":1100.0}\n";
  const std::string torn = step_line(15, 0.5, 1003.0).substr(0, 40);
  const std::string text = begin_line(1000.0) + step_line(5, 2.0, 1001.0) +
                           step_line(10, 1.0, 1002.0) + torn + begin + step_line(15, 0.6, 1101.0);
  const MetricsLog log = parse_metrics_log(text, "m");
  EXPECT_EQ(log.begins, 2);
  EXPECT_EQ(log.torn_before_resume, 1);
  ASSERT_EQ(log.steps.size(), 3u);
  EXPECT_DOUBLE_EQ(log.steps[2].loss, 0.6);
  // A fragment followed by anything but a "begin" is still an error.
  expect_data_error([&] { parse_metrics_log(torn + step_line(15, 0.6, 1101.0), "m"); },
                    "metrics file 'm' line 1: not a JSON object: '" +
                        (torn + step_line(15, 0.6, 1101.0)).substr(0, 60) + "'");
}

TEST(MetricsLogTest, EveryCorruptedByteOfAMiddleLineIsReportedAtThatLine) {
  const std::string text = good_run();
  const size_t third = text.find('\n', text.find('\n') + 1) + 1;
  const size_t third_end = text.find('\n', third);
  for (size_t at = third; at < third_end; ++at) {
    std::string corrupt = text;
    corrupt[at] = '\x01';  // a control character is invalid anywhere in JSON
    try {
      parse_metrics_log(corrupt, "m");
      ADD_FAILURE() << "byte " << at << " accepted";
    } catch (const DataError& e) {
      EXPECT_EQ(std::string(e.what()),
                "metrics file 'm' line 3: not a JSON object: '" +
                    corrupt.substr(third, std::min<size_t>(60, third_end - third)) + "'");
    }
  }
}

TEST(MetricsLogTest, NullLossesReadAsNaNAndUnknownEventsAndBlankLinesAreSkipped) {
  const std::string text =
      begin_line(1000.0) + "\n" +
      "{\"event\":\"step\",\"step\":1,\"epoch\":1,\"loss\":null,\"accuracy\":0.1}\n" +
      "{\"event\":\"guard\",\"step\":1,\"time\":1000.5}\n" +
      "{\"event\":\"auc\",\"test_auc\":0.7,\"time\":1000.6}\n";
  const MetricsLog log = parse_metrics_log(text, "m");
  ASSERT_EQ(log.steps.size(), 1u);
  EXPECT_TRUE(std::isnan(log.steps[0].loss));
  EXPECT_TRUE(std::isnan(log.steps[0].time));
}

TEST(MetricsLogTest, ReadsTheFileAndNamesAMissingOne) {
  testing::ScratchDir dir;
  testing::write_text(metrics_path(dir.path()), good_run());
  EXPECT_EQ(read_metrics_log(io::default_file_system(), metrics_path(dir.path())).steps.size(), 4u);
  const std::string missing = dir.file("none/metrics.jsonl");
  expect_data_error([&] { read_metrics_log(io::default_file_system(), missing); },
                    "cannot read metrics file '" + missing + "': No such file or directory");
}

}  // namespace
}  // namespace dtrain::obs
