// mpi_allreduce_bench: OpenMPI's MPI_Allreduce (float sum, in place) for the
// comparison in run_allreduce_bench.sh.
//   mpirun -np <n> mpi_allreduce_bench <bytes> <reps>
// Prints "openmpi ranks=<n> bytes=<b> median_us=<t> busbw_gbs=<g>" on rank 0;
// each sample is the slowest rank's time for one allreduce.
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  int ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const size_t bytes = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 4096;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 20;
  std::vector<float> data(bytes / sizeof(float), 1.0f);
  std::vector<double> times;
  const int warmup = 5;
  for (int i = 0; i < reps + warmup; ++i) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double start = MPI_Wtime();
    MPI_Allreduce(MPI_IN_PLACE, data.data(), static_cast<int>(data.size()), MPI_FLOAT, MPI_SUM,
                  MPI_COMM_WORLD);
    double t = MPI_Wtime() - start;
    double slowest = 0;
    MPI_Reduce(&t, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (i >= warmup) times.push_back(slowest);
    std::fill(data.begin(), data.end(), 1.0f);
  }
  if (rank == 0) {
    std::sort(times.begin(), times.end());
    const double median = times[times.size() / 2];
    const double factor = ranks > 1 ? 2.0 * (ranks - 1) / ranks : 1.0;
    std::printf("openmpi ranks=%d bytes=%zu median_us=%.2f busbw_gbs=%.3f\n", ranks, bytes,
                median * 1e6, factor * static_cast<double>(bytes) / median / 1e9);
  }
  MPI_Finalize();
  return 0;
}
