// The small-GEMM kernels built with the build's own flags (small_gemm_variants.h).
#include "tensor/small_gemm_kernels.h"
#include "tensor/small_gemm_variants.h"

namespace dtrain::ops {

const SmallGemmKernels* small_gemm_baseline() { return &kKernels; }

}  // namespace dtrain::ops
