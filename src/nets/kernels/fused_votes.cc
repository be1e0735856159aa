// Fused votes for EM routing on the CPU.
//
// The votes of a ConvCaps layer, V_ij = M_i W_ij, form a tensor
// [N, P, C, I, 16] that is far larger than the poses M [N, P, I, 4, 4] and
// the transforms W [I, C, 4, 4] it comes from. Every M-step and every E-step
// reads it once forwards and once backwards. These ops recompute each vote
// (16 lanes, four multiply-adds) where it is consumed, so the vote tensor is
// never stored and never read from memory:
//
//   CapsuleVoteMoments         sum_i R_ij a_i, sum_i R_ij a_i V_ij^h and
//                              sum_i R_ij a_i (V_ij^h - mu_j^h)^2 (mu_j: mean)
//   CapsuleVoteQuadraticForm   sum_h s_j^h (V_ij^h - mu_j^h)^2
//
// with their gradient ops. Layout: n indexes the N * P (example, parent
// position) pairs, i the I child slots, c the C parent types, h = 4 r + s
// the 16 pose components.
//
// The loops visit, for a block of kBlock (example, position) pairs, every
// slot i and parent type c. The poses of the block stay in L1 and the
// transforms (I * C * 64 bytes) in L2; the forward moments keep each
// parent's sums in registers over kSlotsPerStep slots, the gradients take
// kTypesPerStep parent types per step, and the gradient of W_ic is summed
// over the block before it is added to a per-shard accumulator.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <utility>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"

namespace capsules_em {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

constexpr int kSide = 4;   // a pose is a kSide x kSide matrix
constexpr int kPose = 16;  // its components h = kSide * r + s
constexpr int kBlock = 8;  // (example, position) pairs per pass over W

// 16 float lanes, one per pose component h: one AVX-512 register, or two or
// four narrower ones (GCC and Clang vector extensions).
typedef float Lanes __attribute__((vector_size(kPose * sizeof(float))));

inline Lanes Load(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void Store(float* p, Lanes v) { std::memcpy(p, &v, sizeof(v)); }

// sum_h x[h].
inline float Sum(Lanes x) {
  x += __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3,
                               4, 5, 6, 7);
  x += __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8,
                               9, 10, 11);
  x += __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14,
                               15, 12, 13);
  x += __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13,
                               12, 15, 14);
  return x[0];
}

// A 4 x 4 matrix spread over 16 lanes for each product term t:
//   pose:       x[t][4 r + s] = M[r][t]
//   transform:  x[t][4 r + s] = W[t][s]
// so that V[4 r + s] = sum_t pose.x[t][h] * transform.x[t][h].
struct Spread {
  Lanes x[kSide];
};

inline void SpreadPose(const float* m, Spread* out) {
  const Lanes v = Load(m);
  out->x[0] = __builtin_shufflevector(v, v, 0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8,
                                      12, 12, 12, 12);
  out->x[1] = __builtin_shufflevector(v, v, 1, 1, 1, 1, 5, 5, 5, 5, 9, 9, 9, 9,
                                      13, 13, 13, 13);
  out->x[2] = __builtin_shufflevector(v, v, 2, 2, 2, 2, 6, 6, 6, 6, 10, 10, 10,
                                      10, 14, 14, 14, 14);
  out->x[3] = __builtin_shufflevector(v, v, 3, 3, 3, 3, 7, 7, 7, 7, 11, 11, 11,
                                      11, 15, 15, 15, 15);
}

inline void SpreadTransform(const float* w, Spread* out) {
  const Lanes v = Load(w);
  out->x[0] = __builtin_shufflevector(v, v, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3,
                                      0, 1, 2, 3);
  out->x[1] = __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7,
                                      4, 5, 6, 7);
  out->x[2] = __builtin_shufflevector(v, v, 8, 9, 10, 11, 8, 9, 10, 11, 8, 9,
                                      10, 11, 8, 9, 10, 11);
  out->x[3] = __builtin_shufflevector(v, v, 12, 13, 14, 15, 12, 13, 14, 15, 12,
                                      13, 14, 15, 12, 13, 14, 15);
}

inline void Zero(Spread* s) {
  for (int t = 0; t < kSide; ++t) s->x[t] = Lanes{};
}

// V_ij = M_i W_ij.
inline Lanes Vote(const Spread& pose, const Spread& transform) {
  return pose.x[0] * transform.x[0] + pose.x[1] * transform.x[1] +
         pose.x[2] * transform.x[2] + pose.x[3] * transform.x[3];
}

// Given the vote's gradient dV, accumulates the pose's spread gradient
// (dM[r][t] = sum_s dV[4r+s] W[t][s]) and the transform's
// (dW[t][s] = sum_r M[r][t] dV[4r+s]).
inline void AccumulateVoteGradient(Lanes dv, const Spread& pose,
                                   const Spread& transform, Spread* dpose,
                                   Spread* dtransform) {
  for (int t = 0; t < kSide; ++t) {
    dpose->x[t] += dv * transform.x[t];
    dtransform->x[t] += pose.x[t] * dv;
  }
}

// dM[r][t] = sum_s spread.x[t][4r+s], written as a row-major 4 x 4.
inline void GatherPoseGradient(const Spread& spread, float* dm) {
  for (int r = 0; r < kSide; ++r)
    for (int t = 0; t < kSide; ++t) {
      const Lanes& x = spread.x[t];
      dm[r * kSide + t] = (x[r * kSide] + x[r * kSide + 1]) +
                          (x[r * kSide + 2] + x[r * kSide + 3]);
    }
}

// dW[t][s] += sum_r spread.x[t][4r+s], dW a row-major 4 x 4.
inline void AddTransformGradient(const Spread& spread, float* dw) {
  for (int t = 0; t < kSide; ++t)
    for (int s = 0; s < kSide; ++s) {
      const Lanes& x = spread.x[t];
      dw[t * kSide + s] += (x[s] + x[kSide + s]) +
                           (x[2 * kSide + s] + x[3 * kSide + s]);
    }
}

// Sizes of one routing problem.
struct Geometry {
  int64_t pairs;  // N * P
  int64_t slots;  // I
  int64_t types;  // C
};

// Splits the N * P pairs into at most `threads` contiguous shards of whole
// blocks and runs fn(shard, begin, end) for each on the op's thread pool.
template <class Fn>
int RunShards(OpKernelContext* context, int64_t pairs, Fn fn) {
  auto* workers = context->device()->tensorflow_cpu_worker_threads();
  const int64_t blocks = (pairs + kBlock - 1) / kBlock;
  const int shards = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(workers->num_threads, blocks)));
  auto run = [&](int64_t first, int64_t last) {
    for (int64_t shard = first; shard < last; ++shard) {
      const int64_t begin = blocks * shard / shards * kBlock;
      const int64_t end =
          std::min(pairs, blocks * (shard + 1) / shards * kBlock);
      fn(static_cast<int>(shard), begin, end);
    }
  };
  workers->workers->ParallelFor(shards, /*cost_per_unit=*/int64_t{1} << 40,
                                run);
  return shards;
}

// Sums the per-shard spread transform gradients into dW [I, C, 4, 4].
void ReduceTransformGradients(const std::vector<std::vector<Spread>>& spread,
                              int shards, float* dw, int64_t count) {
  std::memset(dw, 0, sizeof(float) * count * kPose);
  for (int shard = 0; shard < shards; ++shard)
    for (int64_t k = 0; k < count; ++k)
      AddTransformGradient(spread[shard][k], dw + k * kPose);
}

// ---------------------------------------------------------------- checks --

tensorflow::Status CheckPosesAndTransforms(const Tensor& poses,
                                           const Tensor& transforms,
                                           Geometry* g) {
  if (poses.dims() != 5 || poses.dim_size(3) != kSide ||
      poses.dim_size(4) != kSide) {
    return tensorflow::errors::InvalidArgument(
        "poses must be [N, P, I, 4, 4], got ", poses.shape().DebugString());
  }
  if (transforms.dims() != 4 || transforms.dim_size(0) != poses.dim_size(2) ||
      transforms.dim_size(2) != kSide || transforms.dim_size(3) != kSide) {
    return tensorflow::errors::InvalidArgument(
        "transforms must be [I, C, 4, 4] with the I of poses ",
        poses.shape().DebugString(), ", got ",
        transforms.shape().DebugString());
  }
  g->pairs = poses.dim_size(0) * poses.dim_size(1);
  g->slots = poses.dim_size(2);
  g->types = transforms.dim_size(1);
  return tensorflow::OkStatus();
}

tensorflow::Status CheckShape(const Tensor& tensor, const TensorShape& expected,
                              const char* name) {
  if (tensor.shape() != expected) {
    return tensorflow::errors::InvalidArgument(
        name, " must be ", expected.DebugString(), ", got ",
        tensor.shape().DebugString());
  }
  return tensorflow::OkStatus();
}

TensorShape PerParentShape(const Tensor& poses, int64_t types, int64_t last) {
  return TensorShape({poses.dim_size(0), poses.dim_size(1), types, last});
}

TensorShape MassShape(const Tensor& poses, int64_t types) {
  return TensorShape({poses.dim_size(0), poses.dim_size(1), types});
}

// ------------------------------------------------------------ gradients --

// Two parent types j, j + 1 per step of the backward loop: the pose of a pair
// and its gradient are loaded and stored once for both.
constexpr int kTypesPerStep = 2;

// The pairs (k, c) of slot i for parent types c .. c + kTypes - 1: recomputes
// each vote, asks the op's `pair` for dV (it writes its own gradients), and
// accumulates the pose and transform gradients.
template <int kTypes, class PairGradient>
inline void BackwardTypes(const Geometry& g, const float* transforms,
                          int count, int64_t i, int64_t c, const Spread* pose,
                          Spread* dpose, Spread* grad_transforms,
                          PairGradient& pair) {
  Spread transform[kTypes], dtransform[kTypes];
  for (int j = 0; j < kTypes; ++j) {
    SpreadTransform(transforms + (i * g.types + c + j) * kPose, &transform[j]);
    Zero(&dtransform[j]);
  }
  for (int k = 0; k < count; ++k) {
    for (int j = 0; j < kTypes; ++j) {
      const Lanes v = Vote(pose[k], transform[j]);
      const Lanes dv = pair.VoteGradient(k, i, c + j, v);
      AccumulateVoteGradient(dv, pose[k], transform[j], &dpose[k],
                             &dtransform[j]);
    }
  }
  for (int j = 0; j < kTypes; ++j) {
    Spread& total = grad_transforms[i * g.types + c + j];
    for (int t = 0; t < kSide; ++t) total.x[t] += dtransform[j].x[t];
  }
}

// The loop both gradient kernels share, over blocks of pairs, slots and
// parent types. `pair` has StartBlock(b, count), StartSlot(i),
// VoteGradient(k, i, c, V) -> dV and EndSlot(i).
template <class PairGradient>
void BackwardLoop(const Geometry& g, const float* poses,
                  const float* transforms, int64_t begin, int64_t end,
                  PairGradient& pair, float* grad_poses,
                  Spread* grad_transforms) {
  Spread pose[kBlock], dpose[kBlock];
  for (int64_t b = begin; b < end; b += kBlock) {
    const int count = static_cast<int>(std::min<int64_t>(kBlock, end - b));
    pair.StartBlock(b, count);
    for (int64_t i = 0; i < g.slots; ++i) {
      for (int k = 0; k < count; ++k) {
        SpreadPose(poses + ((b + k) * g.slots + i) * kPose, &pose[k]);
        Zero(&dpose[k]);
      }
      pair.StartSlot(i);
      int64_t c = 0;
      for (; c + kTypesPerStep <= g.types; c += kTypesPerStep)
        BackwardTypes<kTypesPerStep>(g, transforms, count, i, c, pose, dpose,
                                     grad_transforms, pair);
      for (; c < g.types; ++c)
        BackwardTypes<1>(g, transforms, count, i, c, pose, dpose,
                         grad_transforms, pair);
      pair.EndSlot(i);
      for (int k = 0; k < count; ++k)
        GatherPoseGradient(dpose[k],
                           grad_poses + ((b + k) * g.slots + i) * kPose);
    }
  }
}

// BackwardLoop over the op's shards, with a PairGradient per shard from
// make_pair(), then the shards' transform gradients summed into dW.
template <class MakePair>
void RunBackward(OpKernelContext* context, const Geometry& g,
                 const Tensor& poses, const Tensor& transforms,
                 Tensor* grad_poses, Tensor* grad_transforms,
                 MakePair make_pair) {
  std::vector<std::vector<Spread>> shard_grads(
      context->device()->tensorflow_cpu_worker_threads()->num_threads);
  const int shards = RunShards(
      context, g.pairs, [&](int shard, int64_t begin, int64_t end) {
        shard_grads[shard].assign(g.slots * g.types, Spread{});
        auto pair = make_pair();
        BackwardLoop(g, poses.flat<float>().data(),
                     transforms.flat<float>().data(), begin, end, pair,
                     grad_poses->flat<float>().data(),
                     shard_grads[shard].data());
      });
  ReduceTransformGradients(shard_grads, shards,
                           grad_transforms->flat<float>().data(),
                           g.slots * g.types);
}

// ------------------------------------------------------------- moments --

// sum_i x[i] y[i], 16 lanes at a time.
inline float Dot(const float* x, const float* y, int64_t n) {
  Lanes total{};
  int64_t i = 0;
  for (; i + kPose <= n; i += kPose) total += Load(x + i) * Load(y + i);
  float sum = Sum(total);
  for (; i < n; ++i) sum += x[i] * y[i];
  return sum;
}

// The masses M[n, c] = sum_i R[n, c, i] a[n, i] of the parents of pairs
// b .. b + count - 1, written to mass [N * P * C].
void Masses(const Geometry& g, const float* assignments,
            const float* activations, int64_t b, int count, float* mass) {
  for (int k = 0; k < count; ++k)
    for (int64_t c = 0; c < g.types; ++c) {
      const int64_t parent = (b + k) * g.types + c;
      mass[parent] = Dot(assignments + parent * g.slots,
                         activations + (b + k) * g.slots, g.slots);
    }
}

// For the parents of pairs b .. b + count - 1, each sum [N, P, C, 16] (the
// first moment, or the residual) divided by the parent's mass, and 0 where
// the mass is 0, as divide_no_nan.
void PerUnitMass(const Geometry& g, const float* mass, int64_t b, int count,
                 std::initializer_list<std::pair<const float*, Lanes*>> sums) {
  for (int k = 0; k < count; ++k)
    for (int64_t c = 0; c < g.types; ++c) {
      const int64_t parent = (b + k) * g.types + c;
      for (const auto& [sum, out] : sums) {
        out[k * g.types + c] = mass[parent] == 0.0f
                                   ? Lanes{}
                                   : Load(sum + parent * kPose) / mass[parent];
      }
    }
}

// Slots per step of the forward moments: the sums of a parent stay in
// registers over that many slots between a load and a store.
constexpr int kSlotsPerStep = 4;

// Adds slots i .. i + kSlots - 1 of pairs b .. b + count - 1 to the sums:
// pass 0 to first, pass 1 (means known) to second and residual.
template <int kSlots>
inline void MomentsSlots(const Geometry& g, const float* assignments,
                         const float* activations, const float* poses,
                         const float* transforms, int64_t b, int count,
                         int64_t i, int pass, const Lanes* means,
                         float* first, float* second, float* residual) {
  Spread pose[kBlock][kSlots];
  for (int k = 0; k < count; ++k)
    for (int s = 0; s < kSlots; ++s)
      SpreadPose(poses + ((b + k) * g.slots + i + s) * kPose, &pose[k][s]);
  for (int64_t c = 0; c < g.types; ++c) {
    Spread transform[kSlots];
    for (int s = 0; s < kSlots; ++s)
      SpreadTransform(transforms + ((i + s) * g.types + c) * kPose,
                      &transform[s]);
    for (int k = 0; k < count; ++k) {
      const int64_t parent = (b + k) * g.types + c;
      const float* r = assignments + parent * g.slots + i;
      const float* a = activations + (b + k) * g.slots + i;
      if (pass == 0) {
        Lanes f = Load(first + parent * kPose);
        for (int s = 0; s < kSlots; ++s)
          f += (r[s] * a[s]) * Vote(pose[k][s], transform[s]);
        Store(first + parent * kPose, f);
      } else {
        const Lanes mu = means[k * g.types + c];
        Lanes second_sum = Load(second + parent * kPose);
        Lanes residual_sum = Load(residual + parent * kPose);
        for (int s = 0; s < kSlots; ++s) {
          const Lanes d = Vote(pose[k][s], transform[s]) - mu;
          const Lanes wd = (r[s] * a[s]) * d;
          second_sum += wd * d;
          residual_sum += wd;
        }
        Store(second + parent * kPose, second_sum);
        Store(residual + parent * kPose, residual_sum);
      }
    }
  }
}

// With weights w[n, c, i] = R[n, c, i] a[n, i], two passes over the votes:
//   mass[n, c]     = sum_i w[n, c, i],
//   first[n, c]    = sum_i w[n, c, i] V_ic,
//   second[n, c]   = sum_i w[n, c, i] (V_ic - mu[n, c])^2, mu the mean,
//   residual[n, c] = sum_i w[n, c, i] (V_ic - mu[n, c]),
// the last 0 but for rounding, kept for the gradient.
void MomentsForward(const Geometry& g, const float* assignments,
                    const float* activations, const float* poses,
                    const float* transforms, int64_t begin, int64_t end,
                    float* mass, float* first, float* second,
                    float* residual) {
  std::vector<Lanes> means(kBlock * g.types);
  for (int64_t b = begin; b < end; b += kBlock) {
    const int count = static_cast<int>(std::min<int64_t>(kBlock, end - b));
    for (float* sums : {first, second, residual})
      std::memset(sums + b * g.types * kPose, 0,
                  sizeof(float) * count * g.types * kPose);
    for (int pass = 0; pass < 2; ++pass) {
      if (pass == 1) {
        Masses(g, assignments, activations, b, count, mass);
        PerUnitMass(g, mass, b, count, {{first, means.data()}});
      }
      int64_t i = 0;
      for (; i + kSlotsPerStep <= g.slots; i += kSlotsPerStep)
        MomentsSlots<kSlotsPerStep>(g, assignments, activations, poses,
                                    transforms, b, count, i, pass,
                                    means.data(), first, second, residual);
      for (; i < g.slots; ++i)
        MomentsSlots<1>(g, assignments, activations, poses, transforms, b,
                        count, i, pass, means.data(), first, second,
                        residual);
    }
  }
}

// The gradient of MomentsForward. Through the mean, d second / d V_i and
// d second / d w_i gain -2 e w_i / M and -2 e (V_i - mu) / M, with
// M = sum_i w_i and e the residual: 0 in exact arithmetic, but where a parent's
// mass is (almost) all one child's, V - mu of that child is rounding noise
// that these terms cancel, as the gradient of the two-pass formula does.
class MomentsGradient {
 public:
  MomentsGradient(const Geometry& g, const float* assignments,
                  const float* activations, const float* mass,
                  const float* first, const float* residual,
                  const float* grad_mass, const float* grad_first,
                  const float* grad_second, float* grad_assignments,
                  float* grad_activations)
      : g_(g), assignments_(assignments), activations_(activations),
        mass_(mass), first_(first), residual_(residual),
        grad_mass_(grad_mass), grad_first_(grad_first),
        grad_second_(grad_second), grad_assignments_(grad_assignments),
        grad_activations_(grad_activations), means_(kBlock * g.types),
        corrections_(kBlock * g.types) {}

  void StartBlock(int64_t b, int count) {
    b_ = b;
    count_ = count;
    PerUnitMass(g_, mass_, b, count,
                {{first_, means_.data()}, {residual_, corrections_.data()}});
  }

  void StartSlot(int64_t) {
    for (int k = 0; k < count_; ++k) dactivation_[k] = 0.0f;
  }

  Lanes VoteGradient(int k, int64_t i, int64_t c, Lanes v) {
    const int64_t parent = (b_ + k) * g_.types + c;
    const float r = assignments_[parent * g_.slots + i];
    const float a = activations_[(b_ + k) * g_.slots + i];
    const Lanes g1 = Load(grad_first_ + parent * kPose);
    const Lanes g2 = Load(grad_second_ + parent * kPose);
    const Lanes d = v - means_[k * g_.types + c];
    const Lanes e = corrections_[k * g_.types + c];
    const float dweight =
        grad_mass_[parent] + Sum(g1 * v + g2 * d * (d - 2.0f * e));
    grad_assignments_[parent * g_.slots + i] = a * dweight;
    dactivation_[k] += r * dweight;
    return (r * a) * (g1 + 2.0f * g2 * (d - e));
  }

  void EndSlot(int64_t i) {
    for (int k = 0; k < count_; ++k)
      grad_activations_[(b_ + k) * g_.slots + i] = dactivation_[k];
  }

 private:
  const Geometry& g_;
  const float *assignments_, *activations_, *mass_, *first_, *residual_,
      *grad_mass_, *grad_first_, *grad_second_;
  float *grad_assignments_, *grad_activations_;
  std::vector<Lanes> means_, corrections_;
  float dactivation_[kBlock];
  int64_t b_ = 0;
  int count_ = 0;
};

// Checks assignments [N, P, C, I] and activations [N, P, I] against poses.
tensorflow::Status CheckAssignments(const Tensor& assignments,
                                    const Tensor& activations,
                                    const Tensor& poses, const Geometry& g) {
  TF_RETURN_IF_ERROR(CheckShape(
      assignments, PerParentShape(poses, g.types, g.slots), "assignments"));
  return CheckShape(
      activations,
      TensorShape({poses.dim_size(0), poses.dim_size(1), g.slots}),
      "activations");
}

class VoteMomentsOp : public OpKernel {
 public:
  explicit VoteMomentsOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& assignments = context->input(0);
    const Tensor& activations = context->input(1);
    const Tensor& poses = context->input(2);
    const Tensor& transforms = context->input(3);
    Geometry g;
    OP_REQUIRES_OK(context, CheckPosesAndTransforms(poses, transforms, &g));
    OP_REQUIRES_OK(context,
                   CheckAssignments(assignments, activations, poses, g));
    Tensor* outputs[4] = {};
    OP_REQUIRES_OK(context, context->allocate_output(
                                0, MassShape(poses, g.types), &outputs[0]));
    const TensorShape moments_shape = PerParentShape(poses, g.types, kPose);
    for (int k = 1; k < 4; ++k) {
      OP_REQUIRES_OK(context,
                     context->allocate_output(k, moments_shape, &outputs[k]));
    }
    RunShards(context, g.pairs, [&](int, int64_t begin, int64_t end) {
      MomentsForward(g, assignments.flat<float>().data(),
                     activations.flat<float>().data(),
                     poses.flat<float>().data(),
                     transforms.flat<float>().data(), begin, end,
                     outputs[0]->flat<float>().data(),
                     outputs[1]->flat<float>().data(),
                     outputs[2]->flat<float>().data(),
                     outputs[3]->flat<float>().data());
    });
  }
};

class VoteMomentsGradOp : public OpKernel {
 public:
  explicit VoteMomentsGradOp(OpKernelConstruction* context)
      : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& assignments = context->input(0);
    const Tensor& activations = context->input(1);
    const Tensor& poses = context->input(2);
    const Tensor& transforms = context->input(3);
    const Tensor& mass = context->input(4);
    const Tensor& first = context->input(5);
    const Tensor& residual = context->input(6);
    const Tensor& grad_mass = context->input(7);
    const Tensor& grad_first = context->input(8);
    const Tensor& grad_second = context->input(9);
    Geometry g;
    OP_REQUIRES_OK(context, CheckPosesAndTransforms(poses, transforms, &g));
    OP_REQUIRES_OK(context,
                   CheckAssignments(assignments, activations, poses, g));
    const TensorShape mass_shape = MassShape(poses, g.types);
    const TensorShape moments_shape = PerParentShape(poses, g.types, kPose);
    OP_REQUIRES_OK(context, CheckShape(mass, mass_shape, "mass"));
    OP_REQUIRES_OK(context, CheckShape(grad_mass, mass_shape, "grad_mass"));
    OP_REQUIRES_OK(context, CheckShape(first, moments_shape, "first"));
    OP_REQUIRES_OK(context, CheckShape(residual, moments_shape, "residual"));
    OP_REQUIRES_OK(context,
                   CheckShape(grad_first, moments_shape, "grad_first"));
    OP_REQUIRES_OK(context,
                   CheckShape(grad_second, moments_shape, "grad_second"));
    Tensor* grad_assignments = nullptr;
    Tensor* grad_activations = nullptr;
    Tensor* grad_poses = nullptr;
    Tensor* grad_transforms = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, assignments.shape(),
                                                     &grad_assignments));
    OP_REQUIRES_OK(context, context->allocate_output(1, activations.shape(),
                                                     &grad_activations));
    OP_REQUIRES_OK(context,
                   context->allocate_output(2, poses.shape(), &grad_poses));
    OP_REQUIRES_OK(context, context->allocate_output(3, transforms.shape(),
                                                     &grad_transforms));
    RunBackward(context, g, poses, transforms, grad_poses, grad_transforms,
                [&] {
                  return MomentsGradient(
                      g, assignments.flat<float>().data(),
                      activations.flat<float>().data(),
                      mass.flat<float>().data(), first.flat<float>().data(),
                      residual.flat<float>().data(),
                      grad_mass.flat<float>().data(),
                      grad_first.flat<float>().data(),
                      grad_second.flat<float>().data(),
                      grad_assignments->flat<float>().data(),
                      grad_activations->flat<float>().data());
                });
  }
};

// ------------------------------------------------------ quadratic form --

// q[n, c, i] = sum_h scale[n, c, h] (V_ic^h - mean[n, c, h])^2.
void QuadraticForward(const Geometry& g, const float* poses,
                      const float* transforms, const float* means,
                      const float* scales, int64_t begin, int64_t end,
                      float* out) {
  Spread pose[kBlock];
  for (int64_t b = begin; b < end; b += kBlock) {
    const int count = static_cast<int>(std::min<int64_t>(kBlock, end - b));
    for (int64_t i = 0; i < g.slots; ++i) {
      for (int k = 0; k < count; ++k)
        SpreadPose(poses + ((b + k) * g.slots + i) * kPose, &pose[k]);
      for (int64_t c = 0; c < g.types; ++c) {
        Spread transform;
        SpreadTransform(transforms + (i * g.types + c) * kPose, &transform);
        for (int k = 0; k < count; ++k) {
          const int64_t parent = (b + k) * g.types + c;
          const Lanes d =
              Vote(pose[k], transform) - Load(means + parent * kPose);
          out[parent * g.slots + i] =
              Sum(Load(scales + parent * kPose) * d * d);
        }
      }
    }
  }
}

// The gradient of QuadraticForward: dV = 2 dq s (V - mu), d mu = -sum_i dV,
// d s = sum_i dq (V - mu)^2.
class QuadraticGradient {
 public:
  QuadraticGradient(const Geometry& g, const float* means, const float* scales,
                    const float* grad, float* grad_means, float* grad_scales)
      : g_(g), means_(means), scales_(scales), grad_(grad),
        grad_means_(grad_means), grad_scales_(grad_scales) {}

  void StartBlock(int64_t b, int count) {
    b_ = b;
    std::memset(grad_means_ + b * g_.types * kPose, 0,
                sizeof(float) * count * g_.types * kPose);
    std::memset(grad_scales_ + b * g_.types * kPose, 0,
                sizeof(float) * count * g_.types * kPose);
  }

  void StartSlot(int64_t) {}

  Lanes VoteGradient(int k, int64_t i, int64_t c, Lanes v) {
    const int64_t parent = (b_ + k) * g_.types + c;
    float* dmu = grad_means_ + parent * kPose;
    float* ds = grad_scales_ + parent * kPose;
    const float dq = grad_[parent * g_.slots + i];
    const Lanes d = v - Load(means_ + parent * kPose);
    const Lanes dv = (2.0f * dq) * Load(scales_ + parent * kPose) * d;
    Store(ds, Load(ds) + dq * d * d);
    Store(dmu, Load(dmu) - dv);
    return dv;
  }

  void EndSlot(int64_t) {}

 private:
  const Geometry& g_;
  const float *means_, *scales_, *grad_;
  float *grad_means_, *grad_scales_;
  int64_t b_ = 0;
};

class VoteQuadraticFormOp : public OpKernel {
 public:
  explicit VoteQuadraticFormOp(OpKernelConstruction* context)
      : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& poses = context->input(0);
    const Tensor& transforms = context->input(1);
    const Tensor& means = context->input(2);
    const Tensor& scales = context->input(3);
    Geometry g;
    OP_REQUIRES_OK(context, CheckPosesAndTransforms(poses, transforms, &g));
    const TensorShape per_parent = PerParentShape(poses, g.types, kPose);
    OP_REQUIRES_OK(context, CheckShape(means, per_parent, "means"));
    OP_REQUIRES_OK(context, CheckShape(scales, per_parent, "scales"));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(context,
                   context->allocate_output(
                       0, PerParentShape(poses, g.types, g.slots), &out));
    RunShards(context, g.pairs, [&](int, int64_t begin, int64_t end) {
      QuadraticForward(g, poses.flat<float>().data(),
                       transforms.flat<float>().data(),
                       means.flat<float>().data(), scales.flat<float>().data(),
                       begin, end, out->flat<float>().data());
    });
  }
};

class VoteQuadraticFormGradOp : public OpKernel {
 public:
  explicit VoteQuadraticFormGradOp(OpKernelConstruction* context)
      : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& poses = context->input(0);
    const Tensor& transforms = context->input(1);
    const Tensor& means = context->input(2);
    const Tensor& scales = context->input(3);
    const Tensor& grad = context->input(4);
    Geometry g;
    OP_REQUIRES_OK(context, CheckPosesAndTransforms(poses, transforms, &g));
    const TensorShape per_parent = PerParentShape(poses, g.types, kPose);
    OP_REQUIRES_OK(context, CheckShape(means, per_parent, "means"));
    OP_REQUIRES_OK(context, CheckShape(scales, per_parent, "scales"));
    OP_REQUIRES_OK(context,
                   CheckShape(grad, PerParentShape(poses, g.types, g.slots),
                              "grad"));
    Tensor* grad_poses = nullptr;
    Tensor* grad_transforms = nullptr;
    Tensor* grad_means = nullptr;
    Tensor* grad_scales = nullptr;
    OP_REQUIRES_OK(context,
                   context->allocate_output(0, poses.shape(), &grad_poses));
    OP_REQUIRES_OK(context, context->allocate_output(1, transforms.shape(),
                                                     &grad_transforms));
    OP_REQUIRES_OK(context,
                   context->allocate_output(2, per_parent, &grad_means));
    OP_REQUIRES_OK(context,
                   context->allocate_output(3, per_parent, &grad_scales));
    RunBackward(context, g, poses, transforms, grad_poses, grad_transforms,
                [&] {
                  return QuadraticGradient(g, means.flat<float>().data(),
                                           scales.flat<float>().data(),
                                           grad.flat<float>().data(),
                                           grad_means->flat<float>().data(),
                                           grad_scales->flat<float>().data());
                });
  }
};

// ------------------------------------------------------- registration --

// [N, P, C, last] from poses [N, P, I, 4, 4] and a dimension C.
ShapeHandle PerParent(InferenceContext* c, ShapeHandle poses,
                      DimensionHandle types, DimensionHandle last) {
  return c->MakeShape({c->Dim(poses, 0), c->Dim(poses, 1), types, last});
}

tensorflow::Status MomentsShape(InferenceContext* c) {
  ShapeHandle poses, transforms;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 5, &poses));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 4, &transforms));
  c->set_output(0, c->MakeShape({c->Dim(poses, 0), c->Dim(poses, 1),
                                 c->Dim(transforms, 1)}));
  ShapeHandle out =
      PerParent(c, poses, c->Dim(transforms, 1), c->MakeDim(kPose));
  for (int output = 1; output < 4; ++output) c->set_output(output, out);
  return tensorflow::OkStatus();
}

tensorflow::Status QuadraticShape(InferenceContext* c) {
  ShapeHandle poses, transforms;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 5, &poses));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &transforms));
  c->set_output(0, PerParent(c, poses, c->Dim(transforms, 1),
                             c->Dim(poses, 2)));
  return tensorflow::OkStatus();
}

tensorflow::Status SameAsInputs(InferenceContext* c,
                                std::initializer_list<int> inputs) {
  int output = 0;
  for (int input : inputs) c->set_output(output++, c->input(input));
  return tensorflow::OkStatus();
}

REGISTER_OP("CapsuleVoteMoments")
    .Input("assignments: float")  // R_ij [N, P, C, I]
    .Input("activations: float")  // a_i [N, P, I]
    .Input("poses: float")        // M_i [N, P, I, 4, 4]
    .Input("transforms: float")   // W_ij [I, C, 4, 4]
    .Output("mass: float")    // sum_i R_ij a_i [N, P, C]
    .Output("first: float")   // sum_i R_ij a_i V_ij^h [N, P, C, 16]
    .Output("second: float")  // sum_i R_ij a_i (V_ij^h - mu_j^h)^2, same
    .Output("residual: float")  // sum_i R_ij a_i (V_ij^h - mu_j^h), ~0
    .SetShapeFn(MomentsShape);

REGISTER_OP("CapsuleVoteMomentsGrad")
    .Input("assignments: float")
    .Input("activations: float")
    .Input("poses: float")
    .Input("transforms: float")
    .Input("mass: float")
    .Input("first: float")
    .Input("residual: float")
    .Input("grad_mass: float")
    .Input("grad_first: float")
    .Input("grad_second: float")
    .Output("grad_assignments: float")
    .Output("grad_activations: float")
    .Output("grad_poses: float")
    .Output("grad_transforms: float")
    .SetShapeFn([](InferenceContext* c) {
      return SameAsInputs(c, {0, 1, 2, 3});
    });

REGISTER_OP("CapsuleVoteQuadraticForm")
    .Input("poses: float")       // M_i [N, P, I, 4, 4]
    .Input("transforms: float")  // W_ij [I, C, 4, 4]
    .Input("means: float")       // mu_j^h [N, P, C, 16]
    .Input("scales: float")      // s_j^h [N, P, C, 16]
    .Output("form: float")       // sum_h s_j^h (V_ij^h - mu_j^h)^2 [N, P, C, I]
    .SetShapeFn(QuadraticShape);

REGISTER_OP("CapsuleVoteQuadraticFormGrad")
    .Input("poses: float")
    .Input("transforms: float")
    .Input("means: float")
    .Input("scales: float")
    .Input("grad: float")
    .Output("grad_poses: float")
    .Output("grad_transforms: float")
    .Output("grad_means: float")
    .Output("grad_scales: float")
    .SetShapeFn([](InferenceContext* c) {
      return SameAsInputs(c, {0, 1, 2, 3});
    });

REGISTER_KERNEL_BUILDER(
    Name("CapsuleVoteMoments").Device(tensorflow::DEVICE_CPU), VoteMomentsOp);
REGISTER_KERNEL_BUILDER(
    Name("CapsuleVoteMomentsGrad").Device(tensorflow::DEVICE_CPU),
    VoteMomentsGradOp);
REGISTER_KERNEL_BUILDER(
    Name("CapsuleVoteQuadraticForm").Device(tensorflow::DEVICE_CPU),
    VoteQuadraticFormOp);
REGISTER_KERNEL_BUILDER(
    Name("CapsuleVoteQuadraticFormGrad").Device(tensorflow::DEVICE_CPU),
    VoteQuadraticFormGradOp);

}  // namespace
}  // namespace capsules_em
