#include "tensor/conv_implicit.h"

#include <algorithm>

#include "tensor/intra_op.h"
#include "tensor/ops.h"
#include "tensor/small_gemm.h"

namespace dtrain::ops {
namespace {

typedef float F8 __attribute__((vector_size(8 * sizeof(float))));

// rows[i] <- column i of the 8 x 8 block rows[0..8) (the three rounds of
// unpack, 64-bit and 128-bit shuffles that an AVX 8 x 8 transpose takes).
inline void transpose8(F8 rows[8]) {
  F8 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(rows[i], rows[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(rows[i], rows[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {
    for (int j = 0; j < 2; ++j) {
      u[i + 2 * j] = __builtin_shufflevector(t[i + j], t[i + j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * j + 1] =
          __builtin_shufflevector(t[i + j], t[i + j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  }
  for (int j = 0; j < 4; ++j) {
    rows[j] = __builtin_shufflevector(u[j], u[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    rows[j + 4] = __builtin_shufflevector(u[j], u[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// gyt [Q, O'] = gy_n [O, Q]^T, channels O..O' zero: 8 x 8 blocks
// transposed in registers (a scalar scatter with stride O' took 7% of a
// LeNet-5 step), scalar at the edges.
void transpose_to_channels_last(const float* gyn, int64_t out_channels, int64_t plane,
                                int64_t padded, float* gyt) {
  const int64_t whole_o = padded / 8 * 8;
  int64_t q = 0;
  for (; q + 8 <= plane; q += 8) {
    for (int64_t o0 = 0; o0 < whole_o; o0 += 8) {
      F8 rows[8];
      for (int i = 0; i < 8; ++i) {
        rows[i] = F8{};
        if (o0 + i < out_channels) __builtin_memcpy(&rows[i], gyn + (o0 + i) * plane + q, 32);
      }
      transpose8(rows);
      for (int i = 0; i < 8; ++i) __builtin_memcpy(gyt + (q + i) * padded + o0, &rows[i], 32);
    }
  }
  for (int64_t o = whole_o; o < padded; ++o) {
    for (int64_t p = 0; p < q; ++p) gyt[p * padded + o] = o < out_channels ? gyn[o * plane + p] : 0;
  }
  for (; q < plane; ++q) {
    for (int64_t o = 0; o < padded; ++o) {
      gyt[q * padded + o] = o < out_channels ? gyn[o * plane + q] : 0.0f;
    }
  }
}

// dst[0, n) = src[0, n) for the short rows of a plane (10 to 32 floats in
// LeNet-5): 8-float blocks, the last one overlapping its predecessor, in
// place of a memmove call per row (a memmove call per row took 3-6% of a
// LeNet-5 step).
inline void copy_short(float* __restrict dst, const float* __restrict src, int64_t n) {
  if (n < 8) {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
    return;
  }
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) __builtin_memcpy(dst + i, src + i, 32);
  if (i < n) __builtin_memcpy(dst + n - 8, src + n - 8, 32);
}

}  // namespace

ImplicitConv::ImplicitConv(const Conv2dGeometry& g, const SmallGemmKernels& kernels)
    : g_(g), kernels_(&kernels) {
  hp_ = g.h + 2 * g.pad;
  wp_ = g.w + 2 * g.pad;
  sample_ = g.c * hp_ * wp_;
  const int64_t strip = kernels_->strip;
  grid_ = (g.oh * wp_ + strip - 1) / strip * strip;
  // The last row's shift reaches (K-1)*Wp + K-1 past a plane's start, and the
  // grid runs up to strip - 1 positions past OH*Wp: together at most K - 1 +
  // strip - 1 floats past the last sample.
  slack_ = g.k + strip;
  offsets_.reserve(static_cast<size_t>(g.col_rows()));
  for (int64_t c = 0; c < g.c; ++c) {
    for (int64_t kh = 0; kh < g.k; ++kh) {
      for (int64_t kw = 0; kw < g.k; ++kw) offsets_.push_back(c * hp_ * wp_ + kh * wp_ + kw);
    }
  }
  // The input gradient's rows in (kh, kw, c) order: consecutive rows lie in
  // different channels' planes, which never overlap.
  grad_rows_.reserve(offsets_.size());
  for (int64_t tap = 0; tap < g.k * g.k; ++tap) {
    for (int64_t c = 0; c < g.c; ++c) grad_rows_.push_back(c * g.k * g.k + tap);
  }
  grad_offsets_.reserve(offsets_.size());
  for (const int64_t r : grad_rows_) grad_offsets_.push_back(offsets_[static_cast<size_t>(r)]);
}

void ImplicitConv::pad_samples(int64_t begin, int64_t end, const float* x, float* xpad) const {
  const int64_t p = g_.pad;
  for (int64_t plane = begin * g_.c; plane < end * g_.c; ++plane) {
    const float* src = x + plane * g_.h * g_.w;
    float* dst = xpad + plane * hp_ * wp_;
    std::fill_n(dst, p * wp_, 0.0f);
    for (int64_t ih = 0; ih < g_.h; ++ih) {
      float* row = dst + (ih + p) * wp_;
      std::fill_n(row, p, 0.0f);
      copy_short(row + p, src + ih * g_.w, g_.w);
      std::fill_n(row + p + g_.w, p, 0.0f);
    }
    std::fill_n(dst + (p + g_.h) * wp_, p * wp_, 0.0f);
  }
}

// Samples split over the intra-op threads (each part writes its own planes;
// a separate fan-out from forward's, whose samples read a few floats into
// the next sample's planes).
void ImplicitConv::pad_input(const float* x, float* xpad) const {
  tensor::parallel_for_range(
      g_.n, [&](int64_t begin, int64_t end, int) { pad_samples(begin, end, x, xpad); });
  std::fill_n(xpad + g_.n * sample_, slack_, 0.0f);
}

void ImplicitConv::forward(const float* xpad, const float* w, int64_t out_channels,
                           const float* bias, float* y, float* scratch) const {
  // Samples split over the intra-op threads: part 0 uses the caller's
  // scratch, the others their own, so every sample's output is the same.
  tensor::parallel_for_range(g_.n, [&](int64_t begin, int64_t end, int part) {
    std::vector<float> own(part == 0 ? 0 : static_cast<size_t>(scratch_floats(out_channels)));
    forward_samples(begin, end, xpad, w, out_channels, bias, y, part == 0 ? scratch : own.data());
  });
}

void ImplicitConv::forward_samples(int64_t begin, int64_t end, const float* xpad, const float* w,
                                   int64_t out_channels, const float* bias, float* y,
                                   float* scratch) const {
  const int64_t rows = g_.col_rows();
  const int64_t plane = g_.oh * g_.ow;
  for (int64_t n = begin; n < end; ++n) {
    kernels_->small_m_offsets(out_channels, rows, grid_, w, rows, xpad + n * sample_,
                              offsets_.data(), scratch, grid_, false);
    float* yn = y + n * out_channels * plane;
    for (int64_t o = 0; o < out_channels; ++o) {
      const float b = bias != nullptr ? bias[o] : 0.0f;
      const float* src = scratch + o * grid_;
      float* dst = yn + o * plane;
      for (int64_t oh = 0; oh < g_.oh; ++oh) {
        for (int64_t ow = 0; ow < g_.ow; ++ow) dst[oh * g_.ow + ow] = src[oh * wp_ + ow] + b;
      }
    }
  }
}

int64_t ImplicitConv::weight_grad_scratch_floats(int64_t out_channels) const {
  return (g_.oh * g_.ow + g_.col_rows()) * padded_channels(out_channels);
}

int64_t ImplicitConv::padded_channels(int64_t out_channels) const {
  return kernels_->outer_columns(out_channels);
}

void ImplicitConv::weight_grad(const float* xpad, const float* gy, int64_t out_channels, float* gw,
                               float* gb, float* scratch) const {
  if (gw != nullptr) {
    weight_grad_outer(xpad, gy, out_channels, gw, gb, scratch);
    return;
  }
  if (gb == nullptr) return;
  tensor::parallel_for_range(
      out_channels, [&](int64_t o0, int64_t o1, int) { bias_grad(gy, out_channels, o0, o1, gb); });
}

// Each channel sums its samples in order, as one thread does, whichever
// part runs it (bit-identical).
void ImplicitConv::bias_grad(const float* gy, int64_t out_channels, int64_t o0, int64_t o1,
                             float* gb) const {
  const int64_t plane = g_.oh * g_.ow;
  std::fill(gb + o0, gb + o1, 0.0f);
  for (int64_t n = 0; n < g_.n; ++n) {
    for (int64_t o = o0; o < o1; ++o) {
      gb[o] += static_cast<float>(sum(gy + (n * out_channels + o) * plane, plane));
    }
  }
}

// gW^T [R, O] as outer products over the valid output positions only:
// gy_n^T [Q, O'] (O' = O padded to whole vectors) times the shifted rows,
// output row by output row. The rows R are split over the intra-op threads
// in near-equal contiguous ranges (conv1's 25 rows: 13 and 12, blocked 6 + 7
// and 6 + 6 by gemm_shifted_outer; cuts at its blocks of 6 gave 12 and 13
// with a one-row block on the second part's side), each part with its share
// of the bias channels: every row of gW^T sums its samples and positions in
// the same order as with one thread, whatever block it lands in, so the
// result is bit-identical. Each part transposes gy_n itself (O*Q floats
// against its rows' R_part*O'*Q multiply-adds) into gyt of its own, which
// stays in L1 (the batch transposed once, in a fan-out over the samples,
// into a shared [N, Q, O'] buffer of several MB, then read by every part:
// LeNet-5 with two threads ran at 0.92x the samples/s of this, train_step_bench
// at batch 256, three runs each alternating under chrt -f).
void ImplicitConv::weight_grad_outer(const float* xpad, const float* gy, int64_t out_channels,
                                     float* gw, float* gb, float* scratch) const {
  const int64_t rows = g_.col_rows();
  const int64_t plane = g_.oh * g_.ow;
  const int64_t padded = padded_channels(out_channels);
  float* gwt = scratch + plane * padded;  // [R, O']
  std::fill_n(gwt, rows * padded, 0.0f);
  const int64_t parts = std::min<int64_t>(tensor::intra_op_threads(), rows);
  tensor::parallel_for_range(parts, [&](int64_t part, int64_t, int) {
    if (gb != nullptr) {
      const auto [o0, o1] = tensor::part_range(out_channels, part, parts);
      bias_grad(gy, out_channels, o0, o1, gb);
    }
    const auto [r0, r1] = tensor::part_range(rows, part, parts);
    std::vector<float> own(part == 0 ? 0 : static_cast<size_t>(plane * padded));
    float* gyt = part == 0 ? scratch : own.data();  // [Q, O']
    for (int64_t n = 0; n < g_.n; ++n) {
      transpose_to_channels_last(gy + n * out_channels * plane, out_channels, plane, padded, gyt);
      kernels_->shifted_outer(r1 - r0, padded, g_.oh, g_.ow, wp_, xpad + n * sample_,
                              offsets_.data() + r0, gyt, padded, gwt + r0 * padded, padded);
    }
  });
  for (int64_t o = 0; o < out_channels; ++o) {
    for (int64_t r = 0; r < rows; ++r) gw[o * rows + r] = gwt[r * padded + o];
  }
}

int64_t ImplicitConv::input_grad_scratch_floats(int64_t out_channels) const {
  const int64_t rows = g_.col_rows();
  return rows * out_channels + out_channels * grid_ + sample_ + slack_;
}

void ImplicitConv::input_grad(const float* gy, const float* w, int64_t out_channels, float* gx,
                              float* scratch) const {
  const int64_t rows = g_.col_rows();
  float* wt = scratch;  // [R, O] in grad_rows_ order, shared read-only by every part
  for (int64_t o = 0; o < out_channels; ++o) {
    for (int64_t r = 0; r < rows; ++r) {
      wt[r * out_channels + o] = w[o * rows + grad_rows_[static_cast<size_t>(r)]];
    }
  }
  const int64_t per_part = input_grad_scratch_floats(out_channels) - rows * out_channels;
  tensor::parallel_for_range(g_.n, [&](int64_t begin, int64_t end, int part) {
    std::vector<float> own(part == 0 ? 0 : static_cast<size_t>(per_part));
    input_grad_samples(begin, end, gy, wt, out_channels, gx,
                       part == 0 ? scratch + rows * out_channels : own.data());
  });
}

void ImplicitConv::input_grad_samples(int64_t begin, int64_t end, const float* gy, const float* wt,
                                      int64_t out_channels, float* gx, float* scratch) const {
  const int64_t rows = g_.col_rows();
  const int64_t plane = g_.oh * g_.ow;
  float* gyg = scratch;                       // [O, G]
  float* gxpad = gyg + out_channels * grid_;  // one padded sample + slack
  // The discarded grid positions stay zero: only the valid ones are written.
  std::fill_n(gyg, out_channels * grid_, 0.0f);
  for (int64_t n = begin; n < end; ++n) {
    const float* gyn = gy + n * out_channels * plane;
    for (int64_t o = 0; o < out_channels; ++o) {
      for (int64_t oh = 0; oh < g_.oh; ++oh) {
        copy_short(gyg + o * grid_ + oh * wp_, gyn + o * plane + oh * g_.ow, g_.ow);
      }
    }
    std::fill_n(gxpad, sample_ + slack_, 0.0f);
    kernels_->small_m_add_rows(rows, out_channels, grid_, wt, out_channels, gyg, grid_, gxpad,
                               grad_offsets_.data());
    float* gxn = gx + n * g_.c * g_.h * g_.w;
    for (int64_t c = 0; c < g_.c; ++c) {
      for (int64_t ih = 0; ih < g_.h; ++ih) {
        copy_short(gxn + (c * g_.h + ih) * g_.w,
                   gxpad + c * hp_ * wp_ + (ih + g_.pad) * wp_ + g_.pad, g_.w);
      }
    }
  }
}

}  // namespace dtrain::ops
