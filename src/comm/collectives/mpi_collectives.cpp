#include "comm/collectives/mpi_collectives.h"

#include <climits>
#include <numeric>
#include <string>
#include <vector>

#include "core/error.h"

namespace dtrain::comm {

namespace {

void check(int code, const char* operation) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw CommError(-1, operation, fmt::format("MPI error {}: {}", code, std::string(text, length)));
}

// MPI counts are ints: larger buffers are a usage error here.
int mpi_count(size_t count, const char* operation) {
  if (count > static_cast<size_t>(INT_MAX)) {
    throw UsageError(fmt::format("{}: {} floats exceed MPI's int count", operation, count));
  }
  return static_cast<int>(count);
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::kMax ? MPI_MAX : MPI_SUM; }

void divide(std::span<float> data, int n) {
  const float divisor = static_cast<float>(n);
  for (float& x : data) x /= divisor;
}

}  // namespace

MpiSession::MpiSession(int* argc, char*** argv) {
  int provided = 0;
  check(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
  if (provided < MPI_THREAD_SERIALIZED) {
    MPI_Finalize();
    throw CommError(
        -1, "MPI_Init_thread",
        fmt::format("MPI provides thread level {}, below MPI_THREAD_SERIALIZED", provided));
  }
}

MpiSession::~MpiSession() { MPI_Finalize(); }

MpiCollectives::MpiCollectives(MPI_Comm comm) : comm_(comm) {
  check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
}

void MpiCollectives::allreduce(std::span<float> data, ReduceOp op) {
  const int count = mpi_count(data.size(), "allreduce");
  check(MPI_Allreduce(MPI_IN_PLACE, data.data(), count, MPI_FLOAT, mpi_op(op), comm_), "allreduce");
  if (op == ReduceOp::kMean) divide(data, size_);
}

void MpiCollectives::broadcast(std::span<float> data, int root) {
  if (root < 0 || root >= size_) {
    throw UsageError(fmt::format("broadcast: root {} outside group of size {}", root, size_));
  }
  check(MPI_Bcast(data.data(), mpi_count(data.size(), "broadcast"), MPI_FLOAT, root, comm_),
        "broadcast");
}

void MpiCollectives::allgather(std::span<const float> mine, std::span<float> out) {
  if (out.size() != mine.size() * static_cast<size_t>(size_)) {
    throw UsageError(fmt::format("allgather: output of {} floats is not {} ranks x {} floats",
                                 out.size(), size_, mine.size()));
  }
  const int count = mpi_count(mine.size(), "allgather");
  check(MPI_Allgather(mine.data(), count, MPI_FLOAT, out.data(), count, MPI_FLOAT, comm_),
        "allgather");
}

void MpiCollectives::allgatherv(std::span<const float> mine, std::span<float> out,
                                std::span<const size_t> counts) {
  if (counts.size() != static_cast<size_t>(size_) ||
      counts[static_cast<size_t>(rank_)] != mine.size() ||
      std::accumulate(counts.begin(), counts.end(), size_t{0}) != out.size()) {
    throw UsageError(
        fmt::format("allgatherv: rank {} passes {} floats and an output of {} for "
                    "{} counts that do not add up",
                    rank_, mine.size(), out.size(), counts.size()));
  }
  std::vector<int> int_counts(counts.size());
  std::vector<int> displacements(counts.size());
  size_t offset = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    int_counts[r] = mpi_count(counts[r], "allgatherv");
    displacements[r] = mpi_count(offset, "allgatherv");
    offset += counts[r];
  }
  check(MPI_Allgatherv(mine.data(), mpi_count(mine.size(), "allgatherv"), MPI_FLOAT, out.data(),
                       int_counts.data(), displacements.data(), MPI_FLOAT, comm_),
        "allgatherv");
}

void MpiCollectives::reduce_scatter(std::span<const float> input, std::span<float> output,
                                    ReduceOp op) {
  if (input.size() != output.size() * static_cast<size_t>(size_)) {
    throw UsageError(fmt::format("reduce_scatter: input of {} floats is not {} ranks x {} floats",
                                 input.size(), size_, output.size()));
  }
  check(MPI_Reduce_scatter_block(input.data(), output.data(),
                                 mpi_count(output.size(), "reduce_scatter"), MPI_FLOAT, mpi_op(op),
                                 comm_),
        "reduce_scatter");
  if (op == ReduceOp::kMean) divide(output, size_);
}

void MpiCollectives::barrier() { check(MPI_Barrier(comm_), "barrier"); }

}  // namespace dtrain::comm
