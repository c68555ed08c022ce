// DataLoader: sampler order -> micro-batch -> collated tensors.
#include "sftgo/data/loader.h"

#include <algorithm>

#include "sftgo/core/error.h"

namespace sftgo::data {

LoaderOptions loader_options(const DataOptions& opts, int32_t pad_id, int rank, int world_size) {
  LoaderOptions o;
  o.micro_batch_size = opts.micro_batch_size;
  o.micro_batch_tokens = opts.micro_batch_tokens;
  o.packing = opts.packing;
  o.max_seq_len = opts.max_seq_len;
  o.pad_id = pad_id;
  o.seed = opts.seed;
  o.rank = rank;
  o.world_size = world_size;
  return o;
}

DataLoader::DataLoader(const PreparedDataset& ds, LoaderOptions opts)
    : ds_(ds),
      opts_(opts),
      sampler_(static_cast<int64_t>(ds.examples.size()), opts.seed, opts.rank, opts.world_size, opts.shuffle,
               opts.tail) {
  SFTGO_CHECK(opts.micro_batch_size > 0, ErrorKind::kConfig, "micro batch size must be positive, got ",
              opts.micro_batch_size);
  SFTGO_CHECK_HINT(sampler_.per_rank() > 0, ErrorKind::kData, "use a larger dataset or fewer ranks",
                   "no examples for rank ", opts.rank, " of ", opts.world_size, " (", ds.examples.size(), " examples)");
}

Batch DataLoader::next() {
  if (opts_.micro_batch_tokens <= 0 || opts_.packing) return collate(sampler_.next(opts_.micro_batch_size));
  // Token budget: peek at the rest of the epoch, decide how many examples fit, then take exactly those.
  SamplerState s = sampler_.state();
  if (s.index >= sampler_.per_rank()) s = {s.epoch + 1, 0};
  const std::vector<int64_t> order = sampler_.epoch_order(s.epoch);
  const auto len = [&](size_t k) {
    return static_cast<int64_t>(ds_.examples[static_cast<size_t>(order[k])].ids.size());
  };
  size_t end = static_cast<size_t>(s.index);
  int64_t longest = 0, count = 0;
  while (end < order.size()) {
    const int64_t l = std::max(longest, len(end));
    if (count > 0 && l * (count + 1) > opts_.micro_batch_tokens) break;
    longest = l;
    ++count;
    ++end;
  }
  sampler_.set_state(s);
  return collate(sampler_.next(static_cast<int64_t>(end) - s.index));
}

std::vector<Batch> DataLoader::next_step(int64_t examples) {
  const std::vector<int64_t> indices = sampler_.next(examples);
  std::vector<Batch> out;
  const auto m = static_cast<size_t>(opts_.micro_batch_size);
  for (size_t i = 0; i < indices.size(); i += m)
    out.push_back(
        collate(std::vector<int64_t>(indices.begin() + static_cast<std::ptrdiff_t>(i),
                                     indices.begin() + static_cast<std::ptrdiff_t>(std::min(indices.size(), i + m)))));
  return out;
}

Batch DataLoader::collate(const std::vector<int64_t>& indices) const {
  std::vector<const TokenizedExample*> exs;
  exs.reserve(indices.size());
  for (int64_t i : indices) exs.push_back(&ds_.examples[static_cast<size_t>(i)]);
  return opts_.packing ? collate_packed(exs, opts_.max_seq_len, opts_.pad_id, opts_.pad_to_multiple)
                       : collate_padded(exs, opts_.pad_id, opts_.pad_to_multiple);
}

}  // namespace sftgo::data
