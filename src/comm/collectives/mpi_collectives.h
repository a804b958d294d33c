// MpiCollectives: the Collectives interface (comm/collectives/collectives.h) over an MPI
// communicator (OpenMPI's MPI_Allreduce, MPI_Bcast, MPI_Allgather(v),
// MPI_Reduce_scatter_block, MPI_Barrier), for processes started by mpirun.
// Lives in its own library, dtrain_comm_mpi, so binaries that do not use it
// do not link MPI.
//
// MpiSession initialises MPI (MPI_Init_thread, MPI_THREAD_SERIALIZED) for the
// process and finalises it on destruction; create one in main(), before any
// MpiCollectives, and keep it alive longer than all of them.
//
// Errors: the communicator's error handler is set to MPI_ERRORS_RETURN, and a
// failed call throws CommError naming the operation and MPI's error string
// (peer -1: MPI does not say which rank failed).
// Limitation: MPI calls have no deadline. A dead or absent peer makes a call
// block until mpirun tears the job down; there is no TimeoutError and no
// detection of mismatched calls (the native Communicator has both).
// Ownership: does not own the MPI_Comm it is given. Thread safety: one thread
// at a time per process (MPI_THREAD_SERIALIZED).
#pragma once

#include <mpi.h>

#include "comm/collectives/collectives.h"

namespace dtrain::comm {

class MpiSession {
 public:
  // Throws CommError when MPI cannot be initialised with serialized threads.
  MpiSession(int* argc, char*** argv);
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  ~MpiSession();
};

class MpiCollectives final : public Collectives {
 public:
  // `comm` (MPI_COMM_WORLD by default) outlives this object.
  explicit MpiCollectives(MPI_Comm comm = MPI_COMM_WORLD);

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void allreduce(std::span<float> data, ReduceOp op) override;
  void broadcast(std::span<float> data, int root) override;
  void allgather(std::span<const float> mine, std::span<float> out) override;
  void allgatherv(std::span<const float> mine, std::span<float> out,
                  std::span<const size_t> counts) override;
  void reduce_scatter(std::span<const float> input, std::span<float> output, ReduceOp op) override;
  void barrier() override;

 private:
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace dtrain::comm
