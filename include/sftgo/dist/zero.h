// ZeRO-1: an optimizer whose state (the update rule's tensors, for AdamW exp_avg and exp_avg_sq) and
// fp32 master weights are sharded across ranks. The parameters are viewed as one flat vector (in
// parameter order, zero-padded to a multiple of the world size); rank r owns the contiguous slice
// [r * P / W, (r + 1) * P / W). One step:
//   1. gradients are flattened and reduce-scattered (summed, see docs/architecture.md#dist); with
//      bf16 weights they accumulate over micro-batches and are reduced in fp32 by default,
//   2. the global gradient norm is the all-reduced sum of each shard's squared norm (clipping uses it),
//   3. the update rule (optim::UpdateRule, the same one the other updaters apply) updates this rank's
//      fp32 master shard: decay per parameter, then the element-wise rule in slices,
//   4. the updated shards are all-gathered into the working parameters (bf16 or fp32).
// With AdamW each rank keeps 12 bytes per parameter / W of optimizer state instead of 12 per parameter.
// A rule that needs whole matrices (optim::UpdateRule::needs_whole_matrices) is refused at construction.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "sftgo/dist/dist.h"
#include "sftgo/optim/optim.h"
#include "sftgo/optim/rule.h"

namespace sftgo::dist {

class ZeroOptimizer {
 public:
  // i -> trained parameter i's values [its shape] (any device, the working dtype): the master shard is
  // filled from it, in parameter order, instead of from the parameters (ZeRO-3 builds them without
  // memory). Needs sharded_grads.
  using InitialValues = std::function<at::Tensor(size_t)>;
  // params: the model's working parameters (HF name, tensor), all on comm->device().
  // fp32_grads: with bf16 (or fp16) parameters, every backward's gradient is added into an fp32 flat
  // buffer (a post-accumulate hook, which then frees the bf16 one) and the reduce-scatter sums fp32,
  // as HF, DeepSpeed and Megatron accumulate; it costs 2 bytes per parameter more than accumulating in
  // the weights' dtype (false). fp32 parameters accumulate in fp32 either way.
  // options: the update rule (options.name) and its hyper-parameters; Error(kConfig) for a rule that
  // needs whole matrices.
  // sharded_grads (ZeRO-2): no full-size gradient buffer; the caller (dist::ShardReducer) sums the
  // gradients over ranks itself and adds this rank's part into grad_shard(), step() skips step 1, and
  // step 4 gathers the parameters through bucket-sized pieces. fp32_grads is ignored (fp32 always).
  // host_state (dist.offload_optimizer: cpu, needs sharded_grads): the master shard, the rule's state and the
  // gradient shard live in host memory and the update runs there; gradients arrive through device-to-host
  // copies of the reduced buckets and the gathers copy the updated values back (a no-op on a CPU run).
  ZeroOptimizer(std::shared_ptr<Comm> comm, const optim::NamedParameters& params, const optim::RuleOptions& options,
                bool fp32_grads = true, bool sharded_grads = false, int64_t gather_elements = int64_t{1} << 22,
                bool host_state = false, const InitialValues& initial = {});
  ~ZeroOptimizer();
  ZeroOptimizer(const ZeroOptimizer&) = delete;
  ZeroOptimizer& operator=(const ZeroOptimizer&) = delete;

  // Steps 1-4 above. Returns the global gradient norm before clipping (max_norm 0 = no clipping).
  // finite: the step's loss was finite on every rank (the same value on all of them, as
  // train::Updater::step takes it); false returns NaN at once, with no collective and no update. When
  // the norm is not finite nothing is updated either (every rank sees the same norm, so every rank
  // skips together). Gradients are left as they were; call zero_grad() after.
  double step(double lr, double max_norm, bool finite = true);
  // Zeroes the flat gradient buffer and points every parameter's .grad at its slice of it (backward
  // then accumulates in place, so gradients take no second full-size buffer); with fp32 gradients for
  // bf16 parameters the .grad is left empty instead (the hook adds each backward's into the buffer).
  // Call before the first backward and after every step; do not set the model's gradients to None in
  // between.
  void zero_grad();

  int64_t numel() const { return numel_; }  // parameters in all (unpadded)
  int64_t shard_begin() const { return begin_; }
  int64_t shard_size() const { return shard_; }
  int64_t steps() const { return steps_; }
  at::ScalarType grad_dtype() const { return shard_buf_.scalar_type(); }  // what gradients are reduced in
  // [shard] fp32: this rank's summed gradients (sharded_grads only: the ZeRO-2 reducer adds into it).
  at::Tensor grad_shard() const { return shard_buf_; }
  // param -> [offset, numel) in the flat vector.
  const std::vector<std::pair<int64_t, int64_t>>& segments() const { return segments_; }

  const optim::UpdateRule& rule() const { return *rule_; }
  // [shard] fp32: this rank's master weights (ZeRO-3's ShardedParams gathers the working weights from them;
  // in host memory with host_state).
  const at::Tensor& master_shard() const { return master_; }
  // ZeRO-3: the working parameters are gathered on demand (dist::ShardedParams) instead of after every
  // update and resume (step 4 above is skipped). Needs sharded_grads.
  void gather_on_demand();

  // Writes this rank's shard (master, the rule's state tensors under their names, step count, range,
  // rank and world size, the rule's name) to path.
  void save_shard(const std::string& path) const;
  // Restores this rank's shard from the shard files of a checkpoint saved with any world size
  // (same parameters): each file holds the slice its name gives, and only the files overlapping this
  // rank's slice are opened (zero_shards_overlapping), so a rank reads about 12 bytes per parameter / W.
  // When the files' directory holds kZeroManifestName, each file read must have the size and digest
  // recorded there (a shard copied over another, truncated or from another run is refused, naming it);
  // checkpoints saved before the manifest existed load without it. Shards saved by another rule are
  // refused (files without a rule name are AdamW's).
  void load_shards(const std::vector<std::string>& paths);

 private:
  std::shared_ptr<Comm> comm_;
  std::vector<at::Tensor> params_;
  std::vector<std::pair<int64_t, int64_t>> segments_;  // param -> [offset, numel) in the flat vector
  std::vector<double> decay_;                          // param -> weight decay
  std::unique_ptr<optim::UpdateRule> rule_;
  int64_t numel_ = 0, padded_ = 0, shard_ = 0, begin_ = 0;
  int64_t steps_ = 0;
  at::Tensor master_;              // [shard] fp32
  std::vector<at::Tensor> state_;  // [shard] fp32 each, rule_->state_names() order
  // [padded] gradient dtype: the gradients, then (its storage seen as the working dtype) the gathered
  // parameters, so the all-gather needs no buffer of its own.
  at::Tensor flat_;
  at::Tensor shard_buf_;  // [shard] gradient dtype: reduce-scatter output, then (as above) all-gather input
  bool hooked_ = false;   // gradients reach flat_ through post-accumulate hooks (dtypes differ)
  bool sharded_ = false;  // ZeRO-2: flat_ is never allocated; shard_buf_ is the fp32 gradient shard
  int64_t gather_ = 0;    // ZeRO-2: values per rank in one all-gather piece
  bool on_demand_ = false;  // ZeRO-3: no gather after an update or a resume
  bool host_ = false;       // offload: master_, state_ and shard_buf_ in host memory

  at::Tensor grad_view(size_t i) const;  // param i's slice of flat_, shaped like the param
  void gather_params();                  // master shards -> flat_ -> parameters
  // ZeRO-2: master shard (from the params, or from `initial`) and gradient shard.
  void init_sharded(int64_t gather_elements, const InitialValues& initial);
  void gather_params_in_pieces();        // ZeRO-2: master shards -> [W * piece] buffer -> parameters
};

std::string zero_shard_file_name(int rank, int world_size);  // "zero_rankRRRRR_of_WWWWW.pt"

// A file's size and content digest: hash64 (core/hash.h) chained over 1 MiB blocks, each block's seed
// the previous block's hash, as 16 hex digits. Streams the file; Error(kIo) naming it when unreadable.
struct ZeroShardDigest {
  std::string file;  // the file name, without its directory
  uint64_t bytes = 0;
  std::string hash;
};
ZeroShardDigest zero_shard_digest(const std::string& path);

// The checkpoint file that ties a ZeRO-1 checkpoint's shard files together: the saving world size and,
// per rank in order, its shard's file name, size and digest (JSON, "format": "sftgo-zero-manifest").
inline constexpr const char* kZeroManifestName = "zero_manifest.json";
std::string zero_manifest_json(int world_size, const std::vector<ZeroShardDigest>& shards);
// Parses and validates a manifest (Error(kFormat) naming `source`): one entry per rank, each named
// zero_shard_file_name(rank, world_size).
std::vector<ZeroShardDigest> parse_zero_manifest(const std::string& text, const std::string& source);

// The shard files among `paths` (named by zero_shard_file_name, any saving world size) whose slice of
// a flat vector of `numel` values overlaps [begin, begin + size): the only ones a rank reads on resume.
// Throws Error(kFormat) naming a path that is not a shard file name.
std::vector<std::string> zero_shards_overlapping(const std::vector<std::string>& paths, int64_t numel, int64_t begin,
                                                 int64_t size);

}  // namespace sftgo::dist
