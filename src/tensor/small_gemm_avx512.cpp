// The small-GEMM kernels built for AVX-512 (small_gemm_variants.h), where
// src/tensor/CMakeLists.txt could add -mavx512f to this unit.
#if defined(__AVX512F__)
#include "tensor/small_gemm_kernels.h"
#endif
#include "tensor/small_gemm_variants.h"

namespace dtrain::ops {

#if defined(__AVX512F__)
const SmallGemmKernels* small_gemm_avx512() { return &kKernels; }
#else
const SmallGemmKernels* small_gemm_avx512() { return nullptr; }
#endif

}  // namespace dtrain::ops
