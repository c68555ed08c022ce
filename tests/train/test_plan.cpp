// The memory planner's arithmetic against numbers computed by hand (the sums are written out next to
// each expectation). Exact integers: the planner counts bytes, nothing is measured here.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>

#include "sftgo/core/error.h"
#include "sftgo/train/plan.h"

namespace sftgo::train {
namespace {

// Llama-3.1-8B: 2 x 128256 x 4096 (embedding + untied head) + 32 x 218,112,000 (layer) + 4096 (norm).
constexpr int64_t kP8b = 8'030'261'248;
constexpr int64_t kVH8b = 128'256LL * 4096;  // 525,336,576

Config llama8b_bf16_zero1() {
  Config c;
  c.model.preset = "llama3.1-8b";
  c.train.precision = "bf16";
  c.train.micro_batch_size = 1;
  c.data.max_seq_len = 4096;
  c.model.activation_checkpointing = true;
  c.dist.zero1 = true;
  return c;
}

const PlanRow& row(const MemoryPlan& p, const std::string& name) {
  for (const auto& r : p.rows)
    if (r.choice.name == name) return r;
  throw std::runtime_error("no row " + name);
}

TEST(Plan, Llama8bShapeAndParameterCount) {
  const auto s = planned_model_shape(llama8b_bf16_zero1());
  EXPECT_EQ(s.num_parameters(), kP8b);
  const auto p = plan_memory(llama8b_bf16_zero1(), s, {8, 80});
  EXPECT_EQ(p.total_params, kP8b);
  EXPECT_EQ(p.trainable_params, kP8b);
  EXPECT_EQ(p.weight_bytes, 2);
}

TEST(Plan, Zero1Bf16On8RanksIsTheArchitectureTable) {
  const auto p = plan_memory(llama8b_bf16_zero1(), planned_model_shape(llama8b_bf16_zero1()), {8, 80});
  const auto& z = row(p, "zero1");
  const int64_t shard = kP8b / 8;  // 1,003,782,656: divides evenly, no padding
  EXPECT_TRUE(z.current);
  EXPECT_TRUE(z.choice.implemented);
  EXPECT_EQ(z.device.weights, 2 * kP8b);                   // 16.06 GB bf16 weights
  EXPECT_EQ(z.device.gradients, 4 * kP8b + 2 * kVH8b);     // fp32 flat buffer + one bf16 embedding gradient
  EXPECT_EQ(z.device.masters, 4 * shard);                  // 4.02 GB
  EXPECT_EQ(z.device.moments, 8 * shard);                  // 8.03 GB
  EXPECT_EQ(z.device.comm, 4 * shard);                     // fp32 reduce-scatter shard buffer
  EXPECT_EQ(z.host, 0);
  EXPECT_TRUE(z.fits);  // 65.3 GB of state + activations + 2 GB reserve < 80 GB
  const auto& d = row(p, "ddp");
  EXPECT_FALSE(d.current);
  EXPECT_EQ(d.device.weights + d.device.gradients + d.device.masters + d.device.moments + d.device.comm,
            2 * kP8b + (4 * kP8b + 2 * kVH8b) + 4 * kP8b + 8 * kP8b);  // 145.6 GB
  EXPECT_FALSE(d.fits);
}

TEST(Plan, Zero1FalseFp32GradsKeepsBf16Gradients) {
  Config c = llama8b_bf16_zero1();
  c.dist.zero1_fp32_grads = false;
  const auto p = plan_memory(c, planned_model_shape(c), {8, 80});
  const auto& z = row(p, "zero1");
  // The bf16 flat buffer (no hook) and, with 8 ranks, the embedding's dense per-micro-batch bf16 gradient.
  EXPECT_EQ(z.device.gradients, 2 * kP8b + 2 * kVH8b);
  EXPECT_EQ(z.device.comm, 2 * (kP8b / 8));
}

TEST(Plan, Zero2IsRunnableAndCountsItsBuffers) {
  Config c = llama8b_bf16_zero1();
  c.dist.zero1 = false;
  c.dist.zero = 2;
  const auto p = plan_memory(c, planned_model_shape(c), {8, 80});
  const int64_t shard = kP8b / 8, hi = 4096LL * 14336;  // an MLP weight: 58,720,256
  const auto& z2 = row(p, "zero2");
  EXPECT_TRUE(z2.choice.implemented);
  EXPECT_TRUE(z2.current);
  EXPECT_FALSE(row(p, "zero1").current);
  EXPECT_EQ(z2.device.weights, 2 * kP8b);
  EXPECT_EQ(z2.device.gradients, 4 * shard + 2 * kVH8b);  // fp32 shard + the transient bf16 embedding gradient
  EXPECT_EQ(z2.device.masters, 4 * shard);
  EXPECT_EQ(z2.device.moments, 8 * shard);
  // 3 fp32 buckets alive (2 in flight, 1 filling); parameters over 25 MiB get a bucket of their own: the
  // three largest are the embedding, the untied head (2.10 GB each) and an MLP weight (0.23 GB).
  EXPECT_EQ(z2.device.comm, 4 * kVH8b * 2 + 4 * hi);
  // NCCL: piece = 25 MiB / 4 / 8 ranks = 819,200 values; 8 pieces gathered in bf16 + the bf16 cast.
  EXPECT_EQ(z2.device.step_transient, 8 * 819'200 * 2 + 819'200 * 2);
}

TEST(Plan, Zero2TinyFp32OnTwoGlooRanks) {
  Config c;
  c.model.preset = "tiny";  // H 64, I 256, vocab 1408: every parameter under 25 MiB
  c.model.vocab_size = 1408;
  c.model.device = "cpu";   // dist.backend auto on CPU: Gloo
  c.dist.zero = 2;
  const auto s = planned_model_shape(c);
  const auto p = plan_memory(c, s, {2, 80});
  const int64_t n = s.num_parameters(), shard = (n + 1) / 2;
  const auto& z2 = row(p, "zero2");
  EXPECT_EQ(p.backend, "gloo");
  EXPECT_EQ(z2.device.gradients, 4 * shard + 4 * 1408 * 64);  // fp32 shard + the fp32 embedding gradient
  // 3 buckets of 25 MiB would exceed the whole model: capped by it; plus Gloo's all-to-all receive
  // buffers, 2 buckets capped by world x shard in fp32 (every rank's copy of this rank's shard).
  EXPECT_EQ(z2.device.comm, 4 * n + 4 * 2 * shard);
  // piece = min(shard, 25 MiB / 4 / 2); Gloo gathers into a flat tensor of its own, then copies.
  EXPECT_EQ(z2.device.step_transient, 2 * std::min<int64_t>(shard, 3'276'800) * 4 * 2);
  EXPECT_EQ(z2.device.masters + z2.device.moments, 12 * shard);
}

// One Llama-3.1-8B decoder layer: 4096 x (2 x 4096 + 2 x 1024) + 3 x 4096 x 14336 + 2 x 4096 (norms).
constexpr int64_t kLayer8b = 218'112'000;
// The 8B config's activations with checkpointing (bf16, 4096 tokens): per token 8H + 12H + 4 kv + 8I + 4 x 32
// heads + 8 = 32,768 + 49,152 + 4,096 + 114,688 + 136 = 200,840, so one layer 822,640,640; 32 layer inputs
// 32 x 4096 x 4096 x 2 = 1,073,741,824; backward working set 4096 x 2 x (3 x 14336 + 2 x 4096) = 419,430,400;
// head 4096 x (4H + 4H + 4) = 134,234,112 + the fused loss's 0.105 x 4 x 4096 x 128256 = 220,641,361.92.
constexpr int64_t kAct8bCkpt = int64_t{822'640'640} + 1'073'741'824 + 419'430'400 + 134'234'112 + 220'641'361;

TEST(Plan, Zero3KeepsTheOuterUnitAndTwoLayersAndRecomputes) {
  Config c = llama8b_bf16_zero1();
  c.dist.zero1 = false;
  c.dist.zero = 3;
  c.model.activation_checkpointing = false;  // stage 3 recomputes anyway
  const auto p = plan_memory(c, planned_model_shape(c), {8, 80});
  const int64_t shard = kP8b / 8, mlp = 4096LL * 14336;
  const auto& z3 = row(p, "zero3");
  EXPECT_TRUE(z3.choice.implemented);
  EXPECT_TRUE(z3.current);
  EXPECT_TRUE(z3.recomputes);
  EXPECT_FALSE(row(p, "zero3_offload").current);
  EXPECT_FALSE(row(p, "ddp").recomputes);
  EXPECT_EQ(p.zero3_outer_bytes, 2 * (2 * kVH8b + 4096));  // embedding + untied head + final norm, bf16
  EXPECT_EQ(p.zero3_layer_bytes, 2 * kLayer8b);
  // No working-weight shard: the outer unit and 2 layers in bf16 = 2 x 1,486,901,248.
  EXPECT_EQ(z3.device.weights, 2 * (2 * kVH8b + 4096 + 2 * kLayer8b));
  EXPECT_EQ(z3.device.weights, 2'973'802'496);
  // The fp32 gradient shard + the larger transient bf16 gradient: the embedding's (525M) over a layer's (218M).
  EXPECT_EQ(z3.device.gradients, 4 * shard + 2 * kVH8b);
  EXPECT_EQ(z3.device.masters, 4 * shard);
  EXPECT_EQ(z3.device.moments, 8 * shard);
  EXPECT_EQ(z3.device.comm, 4 * kVH8b * 2 + 4 * mlp);  // ZeRO-2's 3 buckets: 4,437,573,632
  EXPECT_EQ(z3.device.step_transient, 0);               // nothing gathered after the update
  EXPECT_EQ(z3.host, 0);
  // Checkpointed activations although model.activation_checkpointing is false; ddp keeps all 32 layers.
  EXPECT_EQ(p.activations_recomputed.total(), kAct8bCkpt);
  EXPECT_EQ(z3.device.activations, kAct8bCkpt);
  EXPECT_EQ(row(p, "ddp").device.activations, p.activations.total());
  EXPECT_EQ(p.activations.layers, 32 * 822'640'640LL);
  // 2,973,802,496 + 5,065,803,776 + 4,015,130,624 + 8,030,261,248 + 4,437,573,632 + 2,670,688,337.
  EXPECT_EQ(z3.device.total(), 27'193'260'113);
  EXPECT_TRUE(z3.fits);
}

TEST(Plan, Zero3OffloadPutsMastersMomentsAndTheGradientShardOnTheHost) {
  Config c = llama8b_bf16_zero1();
  c.dist.zero1 = false;
  c.dist.zero = 3;
  c.dist.offload_optimizer = "cpu";
  const auto p = plan_memory(c, planned_model_shape(c), {8, 80});
  const int64_t shard = kP8b / 8;
  const auto& o3 = row(p, "zero3_offload");
  EXPECT_TRUE(o3.current);
  EXPECT_TRUE(o3.choice.cpu_offload);
  EXPECT_FALSE(row(p, "zero3").current);
  EXPECT_EQ(o3.device.weights, row(p, "zero3").device.weights);
  EXPECT_EQ(o3.device.gradients, 2 * kVH8b);  // only the transient bf16 embedding gradient stays
  EXPECT_EQ(o3.device.masters + o3.device.moments, 0);
  EXPECT_EQ(o3.device.comm, row(p, "zero3").device.comm);  // the buckets stay on the GPU
  EXPECT_EQ(o3.host, 16 * shard);                          // (2 + 2 AdamW states) x 4 bytes: 16,060,522,496
  EXPECT_EQ(o3.device.total(), 27'193'260'113 - 16 * shard);  // 11,132,737,617
  // zero2_offload: ZeRO-2's row less the same 16 bytes x shard, the step's gather pieces still on the GPU.
  const auto& o2 = row(p, "zero2_offload");
  const auto& z2 = row(p, "zero2");
  EXPECT_EQ(o2.host, 16 * shard);
  EXPECT_EQ(o2.device.weights, 2 * kP8b);
  EXPECT_EQ(o2.device.gradients, 2 * kVH8b);
  EXPECT_EQ(o2.device.step_transient, z2.device.step_transient);
  EXPECT_EQ(o2.device.total(), z2.device.total() - 16 * shard);
  c.dist.zero = 2;
  EXPECT_TRUE(row(plan_memory(c, planned_model_shape(c), {8, 80}), "zero2_offload").current);
}

TEST(Plan, Zero3LoraKeepsTheFrozenBaseWholeAndGathersAdapters) {
  Config c;
  c.model.preset = "tiny";  // H 64, I 256, 4 heads of 16, 2 kv heads, 2 layers
  c.lora.enabled = true;
  c.lora.rank = 16;
  c.dist.zero = 3;
  const auto s = planned_model_shape(c);
  const int64_t base = s.num_parameters(), layer = 16 * 1408, a = 2 * layer, shard = a / 2;  // 22,528 each
  auto p = plan_memory(c, s, {2, 80});
  const auto& z3 = row(p, "zero3");
  EXPECT_TRUE(z3.current);
  EXPECT_EQ(p.zero3_outer_bytes, 0);  // lm_head not targeted: nothing trained outside the layers
  EXPECT_EQ(p.zero3_layer_bytes, 4 * layer);
  EXPECT_EQ(z3.device.weights, 4 * base + 4 * 2 * layer);  // the fp32 base whole + 2 layers' fp32 adapters
  EXPECT_EQ(z3.device.gradients, 4 * shard);               // no transient counted for adapters
  EXPECT_EQ(z3.device.masters, 4 * shard);
  EXPECT_EQ(z3.device.moments, 8 * shard);
  EXPECT_EQ(z3.device.comm, 4 * a);  // 3 buckets of 25 MiB capped by all adapters in fp32
  EXPECT_EQ(z3.device.total(), 4 * base + 8 * layer + 16 * shard + 4 * a + p.activations_recomputed.total());
  const auto& o3 = row(p, "zero3_offload");
  EXPECT_EQ(o3.host, 16 * shard);
  EXPECT_EQ(o3.device.total(), z3.device.total() - 16 * shard);
  // lm_head targeted: its adapter, 16 x (64 + vocab), is the outer unit.
  c.lora.target_modules = "q_proj,v_proj,lm_head";
  p = plan_memory(c, s, {2, 80});
  EXPECT_EQ(p.zero3_outer_bytes, 4 * 16 * (64 + s.vocab_size));
  EXPECT_EQ(p.zero3_layer_bytes, 4 * 16 * ((64 + 64) + (64 + 32)));
}

TEST(Plan, ActivationsOfATinyModelByHand) {
  Config c;
  c.model.preset = "tiny";  // H 64, I 256, 4 heads of 16, 2 kv heads, 2 layers
  c.model.vocab_size = 1408;
  c.train.micro_batch_size = 2;
  c.data.max_seq_len = 8;
  const auto s = planned_model_shape(c);
  auto a = plan_activations(c, s);
  EXPECT_EQ(a.tokens, 16);
  // fp32 per token: 8H + 6eH + 2e kv + 4eI + 4 heads + 8 = 512 + 1536 + 256 + 4096 + 16 + 8 = 6424.
  EXPECT_EQ(a.per_layer, 16 * 6424);
  EXPECT_EQ(a.layers, 2 * 16 * 6424);
  EXPECT_EQ(a.backward_working, 16 * 4 * (3 * 256 + 2 * 64));
  // Final norm 16 x (4H + 2eH + 4) = 12,352, fused loss 0.105 x 4 x 16 x 1408 = 9461.76 -> 9461.
  EXPECT_EQ(a.head, 12'352 + 9'461);
  EXPECT_EQ(a.autocast_weights, 0);

  c.train.precision = "bf16";
  c.model.activation_checkpointing = true;
  a = plan_activations(c, s);
  // bf16 per token: 512 + 768 + 128 + 2048 + 24 = 3480; checkpointing keeps 2 layer inputs of 16 x 64 x 2.
  EXPECT_EQ(a.per_layer, 16 * 3480);
  EXPECT_EQ(a.layers, 2 * 16 * 64 * 2 + 16 * 3480);

  c.train.precision = "bf16_autocast";
  c.model.activation_checkpointing = false;
  c.loss.chunk_tokens = 4;
  a = plan_activations(c, s);
  EXPECT_EQ(a.per_layer, 16 * (30 * 64 + 4 * 32 + 8 * 256 + 16 + 8));
  // Linear weights per layer 64 x (2 x 64 + 2 x 32) + 3 x 64 x 256 = 61,440; the head 1408 x 64.
  EXPECT_EQ(a.autocast_weights, 2 * (2 * 61'440 + 1408 * 64));
  EXPECT_EQ(a.head, 16 * (256 + 512 + 4) + static_cast<int64_t>(0.105 * 4 * 4 * 1408));
}

TEST(Plan, LoraTrainsOnlyFp32Adapters) {
  Config c;
  c.model.preset = "tiny";
  c.lora.enabled = true;
  c.lora.rank = 16;
  const auto s = planned_model_shape(c);
  // Per layer q (64+64), k and v (64+32 each), o (64+64), gate/up/down (64+256 each) = 1408; x 2 layers x r.
  EXPECT_EQ(lora_adapter_params(s, c.lora), 16 * 2 * 1408);
  const auto p = plan_memory(c, s, {1, 80});
  const int64_t a = 16 * 2 * 1408;
  EXPECT_EQ(p.trainable_params, a);
  EXPECT_EQ(p.total_params, s.num_parameters() + a);
  const auto& d = row(p, "ddp");
  EXPECT_EQ(d.device.weights, 4 * s.num_parameters() + 4 * a);
  EXPECT_EQ(d.device.gradients, 4 * a);
  EXPECT_EQ(d.device.masters, 0);
  EXPECT_EQ(d.device.moments, 8 * a);
}

// The bench_memory_1b.py shape: Llama-3.2-1B cut to 2 layers (tied head), one 512-token example per step.
// P = 128256 x 2048 (tied embedding) + 2 x 60,821,504 (layer: 2048 x (2 x 2048 + 2 x 512) + 3 x 2048 x
// 8192 + 2 x 2048) + 2048 (final norm) = 384,313,344.
constexpr int64_t kP1b2 = 384'313'344;
constexpr int64_t kVH1b = 128'256LL * 2048;  // 262,668,288

Config llama1b_two_layers(const std::string& precision) {
  Config c;
  c.model.preset = "llama3.2-1b";
  c.model.num_layers = 2;
  c.model.device = "cpu";
  c.train.precision = precision;
  if (precision == "bf16") c.model.dtype = "bfloat16";
  c.train.micro_batch_size = 1;
  c.train.global_batch_size = 1;
  c.data.max_seq_len = 512;
  return c;
}

// Activations of that config, fp32: per token 8H + 24H + 8 kv + 16I + 4 x 32 heads + 8 = 16,384 + 49,152
// + 4,096 + 131,072 + 136 = 200,840; x 512 tokens x 2 layers = 205,660,160; backward working set 512 x 4
// x (3 x 8192 + 2 x 2048) = 58,720,256; head 512 x (4H + 8H + 4) = 12,584,960 plus the fused loss's
// 0.105 x 4 x 512 x 128,256 = 27,580,170.24 -> 27,580,170.
constexpr int64_t kAct1b2Fp32 = 205'660'160 + 58'720'256 + 12'584'960 + 27'580'170;  // 304,545,546

TEST(Plan, OneProcessFp32FreesItsGradientsSoThePeakIsTheOptimizerStep) {
  const Config c = llama1b_two_layers("fp32");
  const auto s = planned_model_shape(c);
  ASSERT_EQ(s.num_parameters(), kP1b2);
  const auto p = plan_memory(c, s, {1, 80});
  const auto& d = row(p, "ddp").device;
  EXPECT_TRUE(row(p, "ddp").current);
  EXPECT_EQ(d.activations, kAct1b2Fp32);
  EXPECT_TRUE(d.gradients_freed);
  EXPECT_EQ(d.gradients, 4 * kP1b2);             // 1,537,253,376, only from the backward to the step
  EXPECT_EQ(d.backward_gradients, 4 * kVH1b);    // the tied head's gradient, written by the loss backward first
  EXPECT_EQ(d.step_transient, 8 * (1LL << 22));  // clip_grad_norm's float64 slice: 33,554,432
  EXPECT_EQ(d.held(), 12 * kP1b2);               // weights 4P + moments 8P = 4,611,760,128
  // Backward's start: 304,545,546 + 1,050,673,152 = 1,355,218,698; step: 1,537,253,376 + 33,554,432 =
  // 1,570,807,808 (larger): total 4,611,760,128 + 1,570,807,808.
  EXPECT_EQ(d.backward_phase(), 1'355'218'698);
  EXPECT_EQ(d.step_phase(), 1'570'807'808);
  EXPECT_TRUE(d.peak_at_step());
  EXPECT_EQ(d.total(), 6'182'567'936);
  // The ZeRO rows keep their gradient buffers (the flat buffer, the fp32 shard): unchanged.
  EXPECT_FALSE(row(p, "zero1").device.gradients_freed);
  EXPECT_FALSE(row(p, "zero2").device.gradients_freed);
  const auto j = nlohmann::json::parse(plan_json(p));
  EXPECT_EQ(j["choices"][0]["peak_phase"], "step");
  EXPECT_EQ(j["choices"][0]["gradients_freed"], true);
  EXPECT_EQ(j["choices"][0]["backward_gradients"].get<int64_t>(), 4 * kVH1b);
  EXPECT_EQ(j["choices"][0]["device_total"].get<int64_t>(), 6'182'567'936);
  EXPECT_EQ(j["choices"][1]["peak_phase"], "backward");
  EXPECT_NE(plan_table(p).find("the peak is the optimizer step"), std::string::npos);
}

TEST(Plan, GradientsHeldBetweenMicroBatchesOrRanksKeepTheFullStatePlusActivations) {
  Config c = llama1b_two_layers("fp32");
  const auto s = planned_model_shape(c);
  // Two micro-batches per step: the first one's gradients sit beside the second one's activations.
  c.train.global_batch_size = 2;
  auto d = row(plan_memory(c, s, {1, 80}), "ddp").device;
  EXPECT_FALSE(d.gradients_freed);
  EXPECT_EQ(d.step_transient, 0);
  EXPECT_EQ(d.total(), 16 * kP1b2 + kAct1b2Fp32);  // 6,453,559,050
  // Two ranks: the gradients are views of the all-reduce buckets, zeroed in place; plus the embedding's
  // dense per-micro-batch fp32 gradient added into its bucket.
  d = row(plan_memory(c, s, {2, 80}), "ddp").device;
  EXPECT_FALSE(d.gradients_freed);
  EXPECT_EQ(d.total(), 16 * kP1b2 + 4 * kVH1b + kAct1b2Fp32);
}

TEST(Plan, OneProcessBf16KeepsItsFp32MasterGradients) {
  // Fp32MastersUpdater allocates the master gradients once and zeroes them in place: held all the time.
  const Config c = llama1b_two_layers("bf16");
  const auto p = plan_memory(c, planned_model_shape(c), {1, 80});
  const auto& d = row(p, "ddp").device;
  EXPECT_FALSE(d.gradients_freed);
  EXPECT_FALSE(d.peak_at_step());
  // bf16 activations, per token 8H + 12H + 4 kv + 8I + 136 = 16,384 + 24,576 + 2,048 + 65,536 + 136 =
  // 108,680: x 512 x 2 = 111,288,320; working 512 x 2 x 28,672 = 29,360,128; head 512 x (4H + 4H + 4) =
  // 8,390,656 + 27,580,170.
  const int64_t act = 111'288'320 + 29'360'128 + 8'390'656 + 27'580'170;
  EXPECT_EQ(d.activations, act);
  // bf16 weights 2P, fp32 master gradients 4P + the bf16 head gradient before its hook (2 VH), masters 4P,
  // moments 8P.
  EXPECT_EQ(d.total(), 2 * kP1b2 + (4 * kP1b2 + 2 * kVH1b) + 4 * kP1b2 + 8 * kP1b2 + act);
  EXPECT_EQ(d.total(), 7'619'596'042);
}

TEST(Plan, Fp32Zero1PadsTheShardAndKeepsAnFp32Master) {
  Config c;
  c.model.preset = "tiny";
  c.model.vocab_size = 1407;  // 1407 x 64 + 2 x (61,440 + 128) + 64 = 213,248 parameters, not a multiple of 3
  c.dist.zero1 = true;
  const auto s = planned_model_shape(c);
  const int64_t n = s.num_parameters();
  ASSERT_EQ(n, 213'248);
  const auto p = plan_memory(c, s, {3, 80});
  const int64_t shard = (n + 2) / 3;
  const auto& z = row(p, "zero1");
  EXPECT_EQ(z.device.weights, 4 * n);
  // The padded fp32 flat buffer (no hook for fp32) and, with several ranks, the embedding's dense
  // per-micro-batch gradient that is added into its view.
  EXPECT_EQ(z.device.gradients, 4 * shard * 3 + 4 * 1407 * 64);
  EXPECT_EQ(z.device.masters, 4 * shard);
  EXPECT_EQ(z.device.moments, 8 * shard);
  EXPECT_EQ(z.device.comm, 4 * shard);
  // Plain DDP fp32 on 3 ranks: the embedding's dense per-micro-batch gradient on top of the buckets.
  EXPECT_EQ(row(p, "ddp").device.gradients, 4 * n + 4 * 1407 * 64);
}

TEST(Plan, GlooReduceScatterClonesTheFlatBufferDuringTheStep) {
  Config c;
  c.model.preset = "tiny";
  c.model.vocab_size = 1407;  // 213,248 parameters
  c.dist.zero1 = true;
  c.model.device = "cpu";  // dist.backend auto -> gloo
  const auto s = planned_model_shape(c);
  const int64_t shard = (213'248 + 2) / 3;
  auto p = plan_memory(c, s, {3, 80});
  EXPECT_EQ(p.backend, "gloo");
  const auto& z = row(p, "zero1");
  EXPECT_EQ(z.device.step_transient, 4 * shard * 3);  // a clone of the padded fp32 flat buffer
  // The clone and the activations never coexist: the total takes the larger one.
  EXPECT_EQ(z.device.total(), z.device.weights + z.device.gradients + z.device.masters + z.device.moments +
                                  z.device.comm + std::max(z.device.activations, z.device.step_transient));
  EXPECT_EQ(row(p, "ddp").device.step_transient, 0);  // all-reduce works in place
  EXPECT_EQ(row(plan_memory(c, s, {1, 80}), "zero1").device.step_transient, 0);  // one rank: no collective
  c.model.device = "auto";  // planned for GPUs: NCCL reduce-scatters without a copy
  p = plan_memory(c, s, {3, 80});
  EXPECT_EQ(p.backend, "nccl");
  EXPECT_EQ(row(p, "zero1").device.step_transient, 0);
}

TEST(Plan, FitUsesTheReserve) {
  Config c = llama8b_bf16_zero1();
  const auto s = planned_model_shape(c);
  const auto p = plan_memory(c, s, {8, 80});
  const int64_t need = row(p, "zero1").device.total() + kPlanReserveBytes;
  const double just = static_cast<double>(need) / 1e9;
  EXPECT_TRUE(row(plan_memory(c, s, {8, just + 1e-6}), "zero1").fits);
  EXPECT_FALSE(row(plan_memory(c, s, {8, just - 1e-3}), "zero1").fits);
}

TEST(Plan, JsonCarriesEveryRowInBytes) {
  const auto p = plan_memory(llama8b_bf16_zero1(), planned_model_shape(llama8b_bf16_zero1()), {8, 80});
  const auto j = nlohmann::json::parse(plan_json(p));
  ASSERT_EQ(j["choices"].size(), 6u);
  EXPECT_EQ(j["choices"][1]["choice"], "zero1");
  EXPECT_EQ(j["choices"][1]["masters"].get<int64_t>(), 4 * (kP8b / 8));
  const std::vector<std::string> names = {"ddp", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"};
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(j["choices"][i]["choice"], names[i]);
    EXPECT_EQ(j["choices"][i]["status"], "runnable");
    EXPECT_TRUE(j["choices"][i]["implemented"].get<bool>());
    EXPECT_EQ(j["choices"][i]["recomputes"].get<bool>(), i == 3 || i == 5);
  }
  EXPECT_EQ(j["zero3"]["layers_resident"].get<int64_t>(), 2);
  EXPECT_EQ(j["activations_recomputed"]["total"].get<int64_t>(), kAct8bCkpt);
  const std::string table = plan_table(p);
  EXPECT_EQ(table.find("planned"), std::string::npos);
  EXPECT_NE(table.find("zero3 keeps whole only the outer unit"), std::string::npos);
}

TEST(Plan, BadRankCountIsAUsageError) {
  Config c;
  try {
    plan_memory(c, planned_model_shape(c), {0, 80});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--gpus"), std::string::npos);
  }
}

}  // namespace
}  // namespace sftgo::train
