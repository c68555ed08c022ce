#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <random>

#include "sftgo/data/collate.h"
#include "sftgo/data/loader.h"

namespace sftgo::data {
namespace {

// A hand-made example: `n` random ids in [1, vocab), the last `trained` tokens trained.
TokenizedExample make_example(int64_t index, int n, int trained, std::mt19937& rng, int vocab = 50) {
  TokenizedExample ex;
  ex.index = index;
  std::uniform_int_distribution<int> dist(1, vocab - 1);
  for (int t = 0; t < n; ++t) {
    ex.ids.push_back(dist(rng));
    ex.labels.push_back(t >= n - trained ? ex.ids.back() : kIgnoreLabel);
  }
  return ex;
}

TEST(DataCollate, PaddedBatch) {
  std::mt19937 rng(1);
  auto a = make_example(7, 5, 2, rng), b = make_example(9, 3, 3, rng);
  a.groups = {0, 0, 0, 1, 1};
  b.scores["ref_loss"] = {0.5f, 1.5f, 2.5f};
  Batch batch = collate_padded({&a, &b}, /*pad_id=*/0);
  ASSERT_EQ(batch.input_ids.sizes(), (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(batch.input_ids.dtype(), torch::kInt64);
  EXPECT_EQ(batch.document_ids.dtype(), torch::kInt32);
  EXPECT_EQ(batch.groups.dtype(), torch::kUInt8);
  EXPECT_EQ(batch.input_ids[1][3].item<int64_t>(), 0);
  EXPECT_EQ(batch.labels[1][3].item<int64_t>(), kIgnoreLabel);
  EXPECT_EQ(batch.labels[1][0].item<int64_t>(), kIgnoreLabel);  // first token never a target
  EXPECT_EQ(batch.labels[1][1].item<int64_t>(), b.ids[1]);
  EXPECT_EQ(batch.document_ids[1][4].item<int32_t>(), 0);
  EXPECT_EQ(batch.document_ids[1][2].item<int32_t>(), 1);
  EXPECT_FALSE(batch.attention_mask[1][3].item<bool>());
  EXPECT_EQ(batch.groups[0][4].item<uint8_t>(), 1);
  EXPECT_EQ(batch.groups[1].sum().item<int64_t>(), 0);
  ASSERT_EQ(batch.scores.count("ref_loss"), 1u);
  EXPECT_FLOAT_EQ(batch.scores["ref_loss"][1][2].item<float>(), 2.5f);
  EXPECT_FLOAT_EQ(batch.scores["ref_loss"][0][2].item<float>(), 0.f);
  EXPECT_EQ(batch.example_indices, (std::vector<int64_t>{7, 9}));
  EXPECT_EQ(batch.num_trained_tokens, 2 + 2);
  EXPECT_EQ(batch.num_trained_tokens, (batch.labels != kIgnoreLabel).sum().item<int64_t>());
  Batch rounded = collate_padded({&a, &b}, 0, 8);
  EXPECT_EQ(rounded.seq_len(), 8);
}

TEST(DataCollate, PackedBatchResetsPositionsAndIsolatesDocuments) {
  std::mt19937 rng(2);
  std::vector<TokenizedExample> exs;
  for (int i = 0; i < 7; ++i) exs.push_back(make_example(i, 3 + i, 2 + i / 2, rng));
  std::vector<const TokenizedExample*> ptrs;
  for (auto& e : exs) ptrs.push_back(&e);
  const int64_t max_len = 16;
  Batch batch = collate_packed(ptrs, max_len, 0);
  EXPECT_TRUE(batch.packed);
  EXPECT_LE(batch.seq_len(), max_len);
  EXPECT_EQ(batch.example_indices.size(), exs.size());
  auto pos = batch.position_ids.accessor<int64_t, 2>();
  auto doc = batch.document_ids.accessor<int32_t, 2>();
  auto lab = batch.labels.accessor<int64_t, 2>();
  int64_t docs = 0;
  for (int64_t r = 0; r < batch.rows(); ++r) {
    for (int64_t t = 0; t < batch.seq_len(); ++t) {
      const bool starts = doc[r][t] != 0 && (t == 0 || doc[r][t] != doc[r][t - 1]);
      if (starts) {
        ++docs;
        EXPECT_EQ(pos[r][t], 0);
        EXPECT_EQ(lab[r][t], kIgnoreLabel);  // never predicted from the previous document
      } else if (doc[r][t] != 0) {
        EXPECT_EQ(pos[r][t], pos[r][t - 1] + 1);
      }
    }
  }
  EXPECT_EQ(docs, 7);
  int64_t trained = 0;
  for (auto& e : exs) trained += e.num_trained() - (e.labels[0] != kIgnoreLabel);
  EXPECT_EQ(batch.num_trained_tokens, trained);
}

// pad_to_multiple for packed rows (issue 15: sequence lengths a multiple of 64 on a GPU): S rounds up,
// the padding is inert (pad id, ignored labels, document 0, masked) and the trained tokens unchanged.
TEST(DataCollate, PackedBatchRoundsToMultiple) {
  std::mt19937 rng(5);
  std::vector<TokenizedExample> exs;
  for (int i = 0; i < 5; ++i) exs.push_back(make_example(i, 20 + 7 * i, 10, rng));
  std::vector<const TokenizedExample*> ptrs;
  for (auto& e : exs) ptrs.push_back(&e);
  const Batch plain = collate_packed(ptrs, 100, 0);
  const Batch rounded = collate_packed(ptrs, 100, 0, kGpuPadMultiple);
  EXPECT_NE(plain.seq_len() % 64, 0);
  EXPECT_EQ(rounded.seq_len() % 64, 0);
  EXPECT_EQ(rounded.seq_len(), (plain.seq_len() + 63) / 64 * 64);
  const int64_t s = plain.seq_len();
  EXPECT_TRUE(torch::equal(rounded.input_ids.narrow(1, 0, s), plain.input_ids));
  EXPECT_TRUE(torch::equal(rounded.labels.narrow(1, 0, s), plain.labels));
  const int64_t pad = rounded.seq_len() - s;
  EXPECT_TRUE((rounded.labels.narrow(1, s, pad) == kIgnoreLabel).all().item<bool>());
  EXPECT_TRUE((rounded.document_ids.narrow(1, s, pad) == 0).all().item<bool>());
  EXPECT_FALSE(rounded.attention_mask.narrow(1, s, pad).any().item<bool>());
  EXPECT_EQ(rounded.num_trained_tokens, plain.num_trained_tokens);
  EXPECT_EQ(collate_padded(ptrs, 0, kGpuPadMultiple).seq_len() % 64, 0);
}

TEST(DataCollate, PlanPackingFirstFit) {
  auto rows = plan_packing({10, 8, 5, 3, 9}, 16);
  // 10 -> row0; 8 -> row1; 5 -> row0 (15); 3 -> row1 (11); 9 -> row2.
  EXPECT_EQ(rows, (std::vector<std::vector<size_t>>{{0, 2}, {1, 3}, {4}}));
}

// A one-layer attention LM built only from LibTorch ops. It honours position_ids and builds the
// per-document causal mask from document_ids, as the real model must.
struct TinyLm {
  int64_t vocab = 50, dim = 16, max_pos = 64;
  torch::Tensor emb, pos_emb, wq, wk, wv, wo, head;
  TinyLm() {
    torch::manual_seed(0);
    emb = torch::randn({vocab, dim}, torch::kFloat64);        // [V, D]
    pos_emb = torch::randn({max_pos, dim}, torch::kFloat64);  // [P, D]
    wq = torch::randn({dim, dim}, torch::kFloat64) / 4;       // [D, D]
    wk = torch::randn({dim, dim}, torch::kFloat64) / 4;
    wv = torch::randn({dim, dim}, torch::kFloat64) / 4;
    wo = torch::randn({dim, dim}, torch::kFloat64) / 4;
    head = torch::randn({dim, vocab}, torch::kFloat64);  // [D, V]
  }
  // Per-token losses [B, S]: entry t is the loss of predicting labels[t] from tokens <= t-1; 0 where ignored.
  torch::Tensor token_losses(const Batch& b) const {
    auto h = emb.index({b.input_ids}) + pos_emb.index({b.position_ids});              // [B, S, D]
    auto q = h.matmul(wq), k = h.matmul(wk), v = h.matmul(wv);                        // [B, S, D]
    auto scores = q.matmul(k.transpose(1, 2)) / std::sqrt(static_cast<double>(dim));  // [B, S, S]
    auto doc = b.document_ids;                                                        // [B, S]
    auto same = doc.unsqueeze(2) == doc.unsqueeze(1);                                 // [B, S, S]
    auto causal = torch::ones({b.seq_len(), b.seq_len()}, torch::kBool).tril();       // [S, S]
    auto allowed = same & causal.unsqueeze(0) & (doc != 0).unsqueeze(2);              // [B, S, S]
    allowed = allowed | torch::eye(b.seq_len(), torch::kBool).unsqueeze(0);           // padding attends to itself
    scores = scores.masked_fill(~allowed, -1e30);
    auto out = h + torch::softmax(scores, -1).matmul(v).matmul(wo);        // [B, S, D]
    auto logits = out.matmul(head);                                        // [B, S, V]
    auto pred = logits.slice(1, 0, b.seq_len() - 1).reshape({-1, vocab});  // [B*(S-1), V]
    auto target = b.labels.slice(1, 1).reshape({-1});                      // [B*(S-1)]
    auto loss = torch::nn::functional::cross_entropy(
        pred, target,
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreLabel).reduction(torch::kNone));
    auto per = torch::zeros({b.rows(), b.seq_len()}, torch::kFloat64);  // [B, S]
    per.slice(1, 1).copy_(loss.reshape({b.rows(), b.seq_len() - 1}));
    return per;
  }
};

TEST(DataCollate, PackedLossesEqualOneByOne) {
  std::mt19937 rng(3);
  std::vector<TokenizedExample> exs;
  for (int i = 0; i < 9; ++i) exs.push_back(make_example(i, 4 + (i * 5) % 11, 1 + i % 4, rng));
  TinyLm lm;
  // Reference: each example alone, keyed by (example index, position).
  std::map<std::pair<int64_t, int64_t>, double> alone;
  for (auto& e : exs) {
    Batch b = collate_padded({&e}, 0);
    auto per = lm.token_losses(b);
    for (int64_t t = 0; t < b.seq_len(); ++t)
      if (b.labels[0][t].item<int64_t>() != kIgnoreLabel) alone[{e.index, t}] = per[0][t].item<double>();
  }
  std::vector<const TokenizedExample*> ptrs;
  for (auto& e : exs) ptrs.push_back(&e);
  Batch packed = collate_packed(ptrs, 24, 0);
  ASSERT_LT(packed.rows(), static_cast<int64_t>(exs.size()));  // really packed
  auto per = lm.token_losses(packed);
  // Walk the rows in order to map tokens back to (example, position).
  size_t next = 0;
  int64_t compared = 0;
  for (int64_t r = 0; r < packed.rows(); ++r) {
    int32_t prev_doc = 0;
    int64_t ex_index = -1;
    for (int64_t t = 0; t < packed.seq_len(); ++t) {
      const int32_t d = packed.document_ids[r][t].item<int32_t>();
      if (d == 0) break;
      if (d != prev_doc) ex_index = packed.example_indices[next++];
      prev_doc = d;
      if (packed.labels[r][t].item<int64_t>() == kIgnoreLabel) continue;
      const int64_t p = packed.position_ids[r][t].item<int64_t>();
      ASSERT_EQ(alone.count({ex_index, p}), 1u);
      const double ref = alone[{ex_index, p}];
      EXPECT_NEAR(per[r][t].item<double>(), ref, 1e-9);
      ++compared;
    }
  }
  EXPECT_EQ(compared, static_cast<int64_t>(alone.size()));
  EXPECT_EQ(packed.num_trained_tokens, compared);
}

PreparedDataset random_dataset(int n, std::mt19937& rng) {
  PreparedDataset ds;
  std::uniform_int_distribution<int> len(3, 20);
  for (int i = 0; i < n; ++i) {
    int l = len(rng);
    ds.examples.push_back(make_example(i, l, 1 + l / 3, rng));
  }
  return ds;
}

TEST(DataLoader, EpochCoversEveryExampleOnceAndResumes) {
  std::mt19937 rng(4);
  auto ds = random_dataset(53, rng);
  for (bool packing : {false, true}) {
    SCOPED_TRACE(packing ? "packed" : "padded");
    LoaderOptions o;
    o.micro_batch_size = 4;
    o.packing = packing;
    o.max_seq_len = 32;
    o.seed = 9;
    DataLoader loader(ds, o);
    std::map<int64_t, int> seen;
    while (loader.state().epoch == 0 && loader.state().index < loader.examples_per_epoch()) {
      Batch b = loader.next();
      EXPECT_LE(b.rows(), 4);
      if (packing) EXPECT_LE(b.seq_len(), 32);
      for (int64_t i : b.example_indices) seen[i]++;
    }
    EXPECT_EQ(seen.size(), 53u);
    for (auto& [i, c] : seen) EXPECT_EQ(c, 1);
    // Resume: three more batches after a saved state are reproduced by a fresh loader.
    loader.next();
    const SamplerState saved = loader.state();
    std::vector<std::vector<int64_t>> want;
    for (int k = 0; k < 3; ++k) want.push_back(loader.next().example_indices);
    DataLoader again(ds, o);
    again.set_state(saved);
    for (int k = 0; k < 3; ++k) EXPECT_EQ(again.next().example_indices, want[k]);
  }
}

// One data path: a step is `examples` sampler indices cut into micro-batches of micro_batch_size examples
// (packed: those examples packed into rows), exactly what the trainer trains on.
TEST(DataLoader, NextStepIsSamplerOrderInMicroBatchesOfExamples) {
  std::mt19937 rng(6);
  auto ds = random_dataset(30, rng);
  for (bool packing : {false, true}) {
    SCOPED_TRACE(packing ? "packed" : "padded");
    LoaderOptions o;
    o.micro_batch_size = 3;
    o.packing = packing;
    o.max_seq_len = 64;
    o.seed = 2;
    o.rank = 1;
    o.world_size = 2;
    DataLoader loader(ds, o);
    DistributedSampler sampler(30, 2, 1, 2);
    for (int step = 0; step < 4; ++step) {  // 15 per rank: steps of 8 end the epoch with 7
      const std::vector<int64_t> want = sampler.next(8);
      const std::vector<Batch> got = loader.next_step(8);
      ASSERT_EQ(got.size(), (want.size() + 2) / 3);
      std::vector<int64_t> seen;
      for (const auto& b : got) {
        EXPECT_LE(b.rows(), 3);
        seen.insert(seen.end(), b.example_indices.begin(), b.example_indices.end());
      }
      EXPECT_EQ(seen, want);
      EXPECT_EQ(loader.state(), sampler.state());
    }
  }
}

TEST(DataLoader, TokenBudgetAndRanks) {
  std::mt19937 rng(5);
  auto ds = random_dataset(40, rng);
  LoaderOptions o;
  o.micro_batch_tokens = 48;
  o.world_size = 3;
  std::map<int64_t, int> seen;
  for (int r = 0; r < 3; ++r) {
    o.rank = r;
    DataLoader loader(ds, o);
    EXPECT_EQ(loader.examples_per_epoch(), 14);  // ceil(40 / 3): the tail is padded by repeating
    int64_t taken = 0;
    while (taken < loader.examples_per_epoch()) {
      Batch b = loader.next();
      EXPECT_TRUE(b.rows() == 1 || b.rows() * b.seq_len() <= 48);
      taken += b.rows();
      for (int64_t i : b.example_indices) seen[i]++;
    }
  }
  EXPECT_EQ(seen.size(), 40u);
}

}  // namespace
}  // namespace sftgo::data
