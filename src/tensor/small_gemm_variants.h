// The builds of the small-GEMM kernels (tensor/small_gemm_kernels.h), one
// per translation unit; small_gemm.cpp picks among them. small_gemm_avx512()
// is null where the compiler could not build that unit for AVX-512 (it was
// compiled without -mavx512f); whether the CPU runs it is the caller's test.
// Thread safety: the tables are constants.
#pragma once

#include "tensor/small_gemm.h"

namespace dtrain::ops {

const SmallGemmKernels* small_gemm_baseline();
const SmallGemmKernels* small_gemm_avx512();

}  // namespace dtrain::ops
