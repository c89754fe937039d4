#include "common/model/gpt2.h"

#include <cblas.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/host_memory.h"
#include "common/model/cpu_kernels.h"
#include "common/portable_prg.h"
#include "common/tokenizer.h"

namespace fedpers {
namespace {

torch::Tensor FromFloats(const std::vector<float>& v, std::vector<int64_t> shape) {
  return torch::from_blob(const_cast<float*>(v.data()), shape, torch::kFloat32).clone();
}

bool IsTargeted(const LoraConfig& lora, const std::string& target) {
  return std::find(lora.targets.begin(), lora.targets.end(), target) != lora.targets.end();
}

}  // namespace

LoraConv1DImpl::LoraConv1DImpl(int64_t in, int64_t out, const std::string& full_name,
                               const LoraConfig& lora, bool targeted)
    : full_name_(full_name), in_(in), out_(out) {
  weight = register_parameter("weight", torch::zeros({in, out}));
  bias = register_parameter("bias", torch::zeros({out}));
  if (targeted && lora.global_enabled) {
    global_scale_ = lora.global_scale();
    torch::Tensor a_g =
        FromFloats(DeriveLoraA(lora.global_seed, full_name + ".lora_A_global", lora.global_rank, in),
                   {lora.global_rank, in});
    // Frozen (a buffer) unless the fedavg-lora baseline trains it.
    lora_A_global = lora.train_global_a ? register_parameter("lora_A_global", a_g)
                                        : register_buffer("lora_A_global", a_g);
    global_seed_ = lora.global_seed;
    train_global_a_ = lora.train_global_a;
    lora_B_global = register_parameter("lora_B_global", torch::zeros({out, lora.global_rank}));
    global_on_ = true;
  }
  if (targeted && lora.residual_enabled) {
    residual_scale_ = lora.residual_scale();
    lora_A_residual = register_parameter("lora_A_residual", torch::zeros({lora.residual_rank, in}));
    lora_B_residual = register_parameter("lora_B_residual", torch::zeros({out, lora.residual_rank}));
    ResetResidual(0);
    residual_on_ = true;
  }
}

bool LoraConv1DImpl::has_branch(LoraBranch b) const {
  return b == LoraBranch::kGlobal ? lora_B_global.defined() : lora_B_residual.defined();
}

void LoraConv1DImpl::set_branch_enabled(LoraBranch b, bool enabled) {
  TORCH_CHECK(!merged_, "cannot switch LoRA branches of a merged module; unmerge first");
  if (!has_branch(b)) return;
  (b == LoraBranch::kGlobal ? global_on_ : residual_on_) = enabled;
}

bool LoraConv1DImpl::branch_enabled(LoraBranch b) const {
  return has_branch(b) && (b == LoraBranch::kGlobal ? global_on_ : residual_on_);
}

// y = x W_eff + b with W_eff = W + s_g (B_g A_g)^T + s_u (B_u A_u)^T formed
// once per call (in*out*r FLOPs, against N*(in+out)*r for the separate
// branch products). One GEMM forward, one backward for the input gradient,
// and thin products for the LoRA factors' gradients: no extra passes over
// the [N, out] activations. Base weights are frozen on this path.
//
// W_eff is formed again in backward rather than saved: saving it would keep a
// copy of every targeted base weight alive per step in flight (12 MiB per
// worker for `tiny`, whatever the batch), against an in*out*r recompute.
class FusedLoraFunction : public torch::autograd::Function<FusedLoraFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor weight,
                               torch::Tensor bias, torch::Tensor a_g, torch::Tensor b_g, torch::Tensor a_u,
                               torch::Tensor b_u, double s_g, double s_u) {
    ctx->save_for_backward({x, weight, a_g, b_g, a_u, b_u});
    ctx->saved_data["s_g"] = s_g;
    ctx->saved_data["s_u"] = s_u;
    return torch::addmm(bias, x, EffectiveWeight(weight, a_g, b_g, a_u, b_u, s_g, s_u));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &weight = saved[1], &a_g = saved[2], &b_g = saved[3], &a_u = saved[4],
                        &b_u = saved[5];
    const double s_g = ctx->saved_data["s_g"].toDouble(), s_u = ctx->saved_data["s_u"].toDouble();
    const torch::Tensor& gy = grads[0];
    torch::Tensor gx, ga_g, gb_g, ga_u, gb_u;
    if (ctx->needs_input_grad(0)) gx = gy.mm(EffectiveWeight(weight, a_g, b_g, a_u, b_u, s_g, s_u).t());
    const bool want_b_g = b_g.numel() > 0 && ctx->needs_input_grad(4);
    const bool want_b_u = b_u.numel() > 0 && ctx->needs_input_grad(6);
    // Both B gradients from one pass over x and one over gy:
    // [gB_g / s_g | gB_u / s_u] = gy^T (x [A_g; A_u]^T).
    if (want_b_g || want_b_u) {
      torch::Tensor a = want_b_g && want_b_u ? torch::cat({a_g, a_u}, 0) : (want_b_g ? a_g : a_u);
      torch::Tensor gb = gy.t().mm(x.mm(a.t()));
      const int64_t r_g = want_b_g ? a_g.size(0) : 0;
      if (want_b_g) gb_g = gb.narrow(1, 0, r_g).mul(s_g);
      if (want_b_u) gb_u = gb.narrow(1, r_g, a_u.size(0)).mul(s_u);
    }
    if (b_g.numel() > 0 && ctx->needs_input_grad(3)) ga_g = gy.mm(b_g).t().mm(x).mul_(s_g);
    if (b_u.numel() > 0 && ctx->needs_input_grad(5)) ga_u = gy.mm(b_u).t().mm(x).mul_(s_u);
    return {gx, torch::Tensor(), torch::Tensor(), ga_g, gb_g, ga_u, gb_u, torch::Tensor(), torch::Tensor()};
  }

 private:
  // W + s_g (B_g A_g)^T + s_u (B_u A_u)^T; a switched-off branch arrives as an
  // empty tensor (autograd functions take no undefined inputs). The same
  // operations in forward and backward, so both see the same W_eff.
  static torch::Tensor EffectiveWeight(const torch::Tensor& weight, const torch::Tensor& a_g,
                                       const torch::Tensor& b_g, const torch::Tensor& a_u, const torch::Tensor& b_u,
                                       double s_g, double s_u) {
    torch::Tensor w = b_g.numel() > 0 ? torch::addmm(weight, a_g.t(), b_g.t(), 1.0, s_g) : weight.clone();
    if (b_u.numel() > 0) w.addmm_(a_u.t(), b_u.t(), 1.0, s_u);
    return w;
  }
};

torch::Tensor LoraConv1DImpl::forward(const torch::Tensor& x) {
  auto out_shape = x.sizes().vec();
  out_shape.back() = out_;
  torch::Tensor x2 = x.reshape({-1, in_});
  torch::Tensor y;
  const bool any_branch = !merged_ && (global_on_ || residual_on_);
  if (!any_branch || weight.requires_grad() || bias.requires_grad()) {
    // Plain path (pretraining, merged inference), and the unfused branch
    // products when base weights are trainable too.
    y = torch::addmm(bias, x2, weight);
    if (!merged_ && global_on_) {
      y = torch::addmm(y, x2.mm(lora_A_global.t()), lora_B_global.t(), 1.0, global_scale_);
    }
    if (!merged_ && residual_on_) {
      y = torch::addmm(y, x2.mm(lora_A_residual.t()), lora_B_residual.t(), 1.0, residual_scale_);
    }
  } else {
    static const torch::Tensor kOff = torch::empty({0});
    y = FusedLoraFunction::apply(x2, weight, bias, global_on_ ? lora_A_global : kOff,
                                 global_on_ ? lora_B_global : kOff, residual_on_ ? lora_A_residual : kOff,
                                 residual_on_ ? lora_B_residual : kOff, global_scale_, residual_scale_);
  }
  return y.view(out_shape);
}

torch::Tensor LoraConv1DImpl::EffectiveWeight() const {
  torch::NoGradGuard no_grad;
  if (merged_) return weight.detach().clone();
  torch::Tensor w = weight.detach().clone();
  if (global_on_) w.add_(lora_B_global.mm(lora_A_global).t(), global_scale_);
  if (residual_on_) w.add_(lora_B_residual.mm(lora_A_residual).t(), residual_scale_);
  return w;
}

void LoraConv1DImpl::Merge() {
  if (merged_) return;
  torch::NoGradGuard no_grad;
  unmerged_weight_ = weight.detach().clone();
  weight.copy_(EffectiveWeight());
  merged_ = true;
}

void LoraConv1DImpl::Unmerge() {
  if (!merged_) return;
  torch::NoGradGuard no_grad;
  weight.copy_(unmerged_weight_);
  unmerged_weight_ = torch::Tensor();
  merged_ = false;
}

void LoraConv1DImpl::ResetResidual(uint64_t seed) {
  if (!lora_A_residual.defined()) return;
  torch::NoGradGuard no_grad;
  const int64_t r = lora_A_residual.size(0);
  lora_A_residual.copy_(
      FromFloats(DeriveLoraA(seed, full_name_ + ".lora_A_residual", r, in_), {r, in_}));
  lora_B_residual.zero_();
}

void LoraConv1DImpl::ResetGlobal() {
  if (!lora_B_global.defined()) return;
  torch::NoGradGuard no_grad;
  lora_B_global.zero_();
  if (train_global_a_) {
    const int64_t r = lora_A_global.size(0);
    lora_A_global.copy_(FromFloats(DeriveLoraA(global_seed_, full_name_ + ".lora_A_global", r, in_), {r, in_}));
  }
}

Gpt2AttentionImpl::Gpt2AttentionImpl(const ModelConfig& c, const LoraConfig& lora, int64_t layer)
    : n_head_(c.n_head), n_embd_(c.n_embd) {
  const std::string prefix = absl::StrCat("transformer.h.", layer, ".");
  c_attn = register_module("c_attn", LoraConv1D(c.n_embd, 3 * c.n_embd, prefix + "attn.c_attn",
                                                lora, IsTargeted(lora, "attn.c_attn")));
  c_proj = register_module("c_proj", LoraConv1D(c.n_embd, c.n_embd, prefix + "attn.c_proj", lora,
                                                IsTargeted(lora, "attn.c_proj")));
}

// Causal multi-head attention straight on the fused qkv projection
// [B, T, 3C]: per (batch, head) pair, S = Q K^T / sqrt(D), P = causal
// softmax(S), Y = P V, with BLAS reading Q, K, V and writing Y through row
// strides, so no head is ever copied out or transposed. Rows are taken in
// two blocks, [0, m) and [m, T): the first only needs keys [0, m), which
// skips a quarter of the products that the causal mask would discard. Pairs
// are spread over the intra-op threads with single-threaded GEMMs (OpenBLAS
// runs serially inside an OpenMP region), which beats one multi-threaded
// GEMM per small head. Backward writes dQ, dK, dV into one [B, T, 3C]
// gradient. Saves P (entries above the diagonal are 0).
class CausalAttentionFunction : public torch::autograd::Function<CausalAttentionFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& qkv_in,
                               int64_t n_head) {
    torch::Tensor qkv = qkv_in.contiguous();
    const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3, H = n_head, D = C / H;
    const int64_t m = T / 2, ld = 3 * C;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    torch::Tensor probs = torch::empty({B, H, T, T}, qkv.options());
    torch::Tensor y = torch::empty({B, T, C}, qkv.options());
    const float* pqkv = qkv.data_ptr<float>();
    float* pp = probs.data_ptr<float>();
    float* py = y.data_ptr<float>();
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        const float* q = pqkv + b * T * ld + h * D;
        const float *k = q + C, *v = q + 2 * C;
        float* p = pp + bh * T * T;
        float* out = py + b * T * C + h * D;
        if (m > 0) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, m, D, scale, q, ld, k, ld, 0.0f, p, T);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T - m, T, D, scale, q + m * ld, ld, k, ld, 0.0f,
                    p + m * T, T);
        CausalSoftmaxRows(p, T);
        if (m > 0) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, m, 1.0f, p, T, v, ld, 0.0f, out, C);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T - m, D, T, 1.0f, p + m * T, T, v, ld, 0.0f,
                    out + m * C, C);
      }
    });
    ctx->save_for_backward({qkv, probs});
    ctx->saved_data["n_head"] = n_head;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor& qkv = saved[0];
    const torch::Tensor& probs = saved[1];
    const int64_t H = ctx->saved_data["n_head"].toInt();
    const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3, D = C / H;
    const int64_t m = T / 2, ld = 3 * C;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    torch::Tensor gy = grads[0].contiguous();
    torch::Tensor gqkv = torch::empty_like(qkv);
    const float* pqkv = qkv.data_ptr<float>();
    const float* pp = probs.data_ptr<float>();
    const float* pgy = gy.data_ptr<float>();
    float* pg = gqkv.data_ptr<float>();
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> ds(static_cast<size_t>(T * T));
      float* g = ds.data();
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        const int64_t off = b * T * ld + h * D;
        const float *q = pqkv + off, *k = q + C, *v = q + 2 * C;
        float *gq = pg + off, *gk = gq + C, *gv = gq + 2 * C;
        const float* p = pp + bh * T * T;
        const float* dy = pgy + b * T * C + h * D;
        // dP = dY V^T on the causal blocks.
        if (m > 0) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, m, D, 1.0f, dy, C, v, ld, 0.0f, g, T);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T - m, T, D, 1.0f, dy + m * C, C, v, ld, 0.0f,
                    g + m * T, T);
        // dV = P^T dY: the second block reaches every key, the first adds to keys [0, m).
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, D, T - m, 1.0f, p + m * T, T, dy + m * C, C, 0.0f,
                    gv, ld);
        if (m > 0) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, D, m, 1.0f, p, T, dy, C, 1.0f, gv, ld);
        SoftmaxBackwardRows(p, g, T);
        // dQ = scale dS K, dK = scale dS^T Q, blockwise as above.
        if (m > 0) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, m, scale, g, T, k, ld, 0.0f, gq, ld);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T - m, D, T, scale, g + m * T, T, k, ld, 0.0f,
                    gq + m * ld, ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, D, T - m, scale, g + m * T, T, q + m * ld, ld, 0.0f,
                    gk, ld);
        if (m > 0) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, D, m, scale, g, T, q, ld, 1.0f, gk, ld);
      }
    });
    return {gqkv, torch::Tensor()};
  }
};

torch::Tensor CausalSelfAttention(const torch::Tensor& qkv, int64_t n_head) {
  if (qkv.scalar_type() == torch::kFloat32) return CausalAttentionFunction::apply(qkv, n_head);
  const int64_t B = qkv.size(0), T = qkv.size(1), C = qkv.size(2) / 3, H = n_head, D = C / H;
  auto heads = [&](const torch::Tensor& t) {
    return t.view({B, T, H, D}).transpose(1, 2).reshape({B * H, T, D});
  };
  std::vector<torch::Tensor> parts = qkv.split(C, -1);
  torch::Tensor q = heads(parts[0]), k = heads(parts[1]), v = heads(parts[2]);
  namespace idx = torch::indexing;
  torch::Tensor bias = torch::full({T, T}, -INFINITY, qkv.options()).triu(1);
  torch::Tensor scores = torch::baddbmm(bias, q, k.transpose(1, 2), 1.0, 1.0 / std::sqrt(double(D)));
  return torch::bmm(torch::softmax(scores, -1), v).view({B, H, T, D}).transpose(1, 2).reshape({B, T, C});
}

torch::Tensor Gpt2AttentionImpl::forward(const torch::Tensor& x) {
  return c_proj(CausalSelfAttention(c_attn(x), n_head_));
}

Gpt2MlpImpl::Gpt2MlpImpl(const ModelConfig& c, const LoraConfig& lora, int64_t layer)
    : activation_(c.activation) {
  const std::string prefix = absl::StrCat("transformer.h.", layer, ".");
  c_fc = register_module("c_fc", LoraConv1D(c.n_embd, c.inner_dim(), prefix + "mlp.c_fc", lora,
                                            IsTargeted(lora, "mlp.c_fc")));
  c_proj = register_module("c_proj", LoraConv1D(c.inner_dim(), c.n_embd, prefix + "mlp.c_proj",
                                                lora, IsTargeted(lora, "mlp.c_proj")));
}

// GELU (tanh form) on the project's vectorized kernels, split over the
// intra-op threads.
class GeluTanhFunction : public torch::autograd::Function<GeluTanhFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x) {
    torch::Tensor xc = x.contiguous();
    torch::Tensor y = torch::empty_like(xc);
    const float* px = xc.data_ptr<float>();
    float* py = y.data_ptr<float>();
    at::parallel_for(0, xc.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
      GeluTanhForward(px + begin, py + begin, end - begin);
    });
    ctx->save_for_backward({xc});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::Tensor x = ctx->get_saved_variables()[0];
    torch::Tensor gy = grads[0].contiguous();
    torch::Tensor gx = torch::empty_like(x);
    const float* px = x.data_ptr<float>();
    const float* pgy = gy.data_ptr<float>();
    float* pgx = gx.data_ptr<float>();
    at::parallel_for(0, x.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
      GeluTanhBackward(px + begin, pgy + begin, pgx + begin, end - begin);
    });
    return {gx};
  }
};

torch::Tensor Gpt2MlpImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = c_fc(x);
  if (activation_ == Activation::kGeluTanh && h.scalar_type() == torch::kFloat32) {
    h = GeluTanhFunction::apply(h);
  } else {
    h = torch::gelu(h, activation_ == Activation::kGeluTanh ? "tanh" : "none");
  }
  return c_proj(h);
}

Gpt2BlockImpl::Gpt2BlockImpl(const ModelConfig& c, const LoraConfig& lora, int64_t layer) {
  auto ln = torch::nn::LayerNormOptions({c.n_embd}).eps(c.layer_norm_epsilon);
  ln_1 = register_module("ln_1", torch::nn::LayerNorm(ln));
  attn = register_module("attn", Gpt2Attention(c, lora, layer));
  ln_2 = register_module("ln_2", torch::nn::LayerNorm(ln));
  mlp = register_module("mlp", Gpt2Mlp(c, lora, layer));
}

torch::Tensor Gpt2BlockImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = x + attn(ln_1(x));
  return h + mlp(ln_2(h));
}

Gpt2TransformerImpl::Gpt2TransformerImpl(const ModelConfig& c, const LoraConfig& lora) {
  wte = register_module("wte", torch::nn::Embedding(c.vocab_size, c.n_embd));
  wpe = register_module("wpe", torch::nn::Embedding(c.n_positions, c.n_embd));
  h = register_module("h", torch::nn::ModuleList());
  for (int64_t l = 0; l < c.n_layer; ++l) {
    blocks.push_back(Gpt2Block(c, lora, l));
    h->push_back(blocks.back());
  }
  ln_f = register_module(
      "ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.n_embd}).eps(c.layer_norm_epsilon)));
}

// A block whose forward records nothing but its input; backward runs the
// block's forward again with gradients on and differentiates that. The
// block's trainable parameters are inputs of this function, so autograd
// routes their gradients through it (and it runs when only they need one,
// as in the first block, whose input comes from frozen embeddings).
class RecomputedBlockFunction : public torch::autograd::Function<RecomputedBlockFunction> {
 public:
  // `block` must outlive the graph (the trainer's model does).
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               torch::TensorList trainable, Gpt2BlockImpl* block) {
    // Saved, not looked up again in backward: autograd then checks that no
    // parameter changed in place before backward, and the gradients go to
    // exactly these tensors.
    std::vector<torch::Tensor> saved = {x};
    saved.insert(saved.end(), trainable.begin(), trainable.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["block"] = reinterpret_cast<int64_t>(block);
    return block->forward(x);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* block = reinterpret_cast<Gpt2BlockImpl*>(ctx->saved_data["block"].toInt());
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const int64_t n = static_cast<int64_t>(saved.size()) - 1;
    const bool want_x = ctx->needs_input_grad(0);
    torch::Tensor x = saved[0].detach().requires_grad_(want_x);
    torch::Tensor y;
    {
      torch::AutoGradMode enable(true);
      y = block->forward(x);
    }
    std::vector<torch::Tensor> wrt;
    if (want_x) wrt.push_back(x);
    for (int64_t i = 0; i < n; ++i) {
      if (ctx->needs_input_grad(1 + i)) wrt.push_back(saved[static_cast<size_t>(1 + i)]);
    }
    // The output depends on none of them (e.g. every trainable branch
    // switched off and a frozen input): no gradient, as without recompute.
    torch::autograd::variable_list got(wrt.size());
    if (!wrt.empty() && y.requires_grad()) {
      got = torch::autograd::grad({y}, wrt, {grads[0]}, false, false, /*allow_unused=*/true);
    }
    torch::autograd::variable_list out;
    size_t k = 0;
    out.push_back(want_x ? got[k++] : torch::Tensor());
    for (int64_t i = 0; i < n; ++i) out.push_back(ctx->needs_input_grad(1 + i) ? got[k++] : torch::Tensor());
    out.push_back(torch::Tensor());  // the block pointer
    return out;
  }
};

torch::Tensor Gpt2TransformerImpl::forward(const torch::Tensor& ids) {
  const int64_t T = ids.size(1);
  torch::Tensor pos = torch::arange(T, torch::kLong);
  torch::Tensor x = wte(ids) + wpe(pos);
  const bool recompute = recompute_activations_ && torch::GradMode::is_enabled();
  for (Gpt2Block& b : blocks) {
    if (!recompute) {
      x = b(x);
      continue;
    }
    std::vector<torch::Tensor> trainable;
    for (const auto& p : b->parameters()) {
      if (p.requires_grad()) trainable.push_back(p);
    }
    x = RecomputedBlockFunction::apply(x, torch::TensorList(trainable), b.get());
  }
  return ln_f(x);
}

Gpt2LmHeadImpl::Gpt2LmHeadImpl(const ModelConfig& config, const LoraConfig& lora)
    : config_(config), lora_(lora) {
  transformer = register_module("transformer", Gpt2Transformer(config, lora));
  for (Gpt2Block& b : transformer->blocks) {
    for (LoraConv1D m : {b->attn->c_attn, b->attn->c_proj, b->mlp->c_fc, b->mlp->c_proj}) {
      if (m->has_branch(LoraBranch::kGlobal) || m->has_branch(LoraBranch::kResidual)) {
        lora_modules_.push_back(m);
      }
    }
  }
  if (lora.global_enabled) global_layout_ = GlobalAdapterLayout(config, lora).value();
  if (lora.residual_enabled) residual_layout_ = ResidualAdapterLayout(config, lora).value();
  SetBaseTrainable(false);
}

torch::Tensor Gpt2LmHeadImpl::forward(const torch::Tensor& ids) {
  torch::Tensor h = transformer(ids);
  return torch::matmul(h, transformer->wte->weight.t());
}

torch::Tensor Gpt2LmHeadImpl::Loss(const torch::Tensor& ids, const torch::Tensor& targets) {
  torch::Tensor logits = forward(ids);
  return torch::nn::functional::cross_entropy(
      logits.view({-1, logits.size(-1)}), targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(ByteTokenizer::kPad));
}

std::vector<std::pair<std::string, torch::Tensor>> Gpt2LmHeadImpl::BaseParameters() {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : named_parameters(/*recurse=*/true)) {
    if (item.key().find(".lora_") != std::string::npos) continue;
    out.emplace_back(item.key(), item.value());
  }
  return out;
}

void Gpt2LmHeadImpl::SetBaseTrainable(bool trainable) {
  for (auto& [name, p] : BaseParameters()) p.set_requires_grad(trainable);
}

void Gpt2LmHeadImpl::InitBaseWeights() {
  torch::NoGradGuard no_grad;
  const double proj_std = 0.02 / std::sqrt(2.0 * static_cast<double>(config_.n_layer));
  for (auto& [name, p] : BaseParameters()) {
    const bool is_ln = name.find(".ln_") != std::string::npos || name.find("ln_f.") != std::string::npos;
    if (is_ln) {
      if (name.ends_with(".weight")) p.fill_(1.0);
      else p.zero_();
    } else if (name.ends_with(".bias")) {
      p.zero_();
    } else if (name.ends_with("c_proj.weight")) {
      p.normal_(0.0, proj_std);
    } else {
      p.normal_(0.0, 0.02);
    }
  }
}

void Gpt2LmHeadImpl::SetBranchEnabled(LoraBranch b, bool enabled) {
  for (LoraConv1D& m : lora_modules_) m->set_branch_enabled(b, enabled);
}

std::vector<torch::Tensor> Gpt2LmHeadImpl::BranchParameters(LoraBranch b) {
  std::vector<torch::Tensor> out;
  for (LoraConv1D& m : lora_modules_) {
    if (!m->has_branch(b)) continue;
    if (b == LoraBranch::kGlobal) {
      if (lora_.train_global_a) out.push_back(m->lora_A_global);
      out.push_back(m->lora_B_global);
    } else {
      out.push_back(m->lora_A_residual);
      out.push_back(m->lora_B_residual);
    }
  }
  return out;
}

const FlatLayout& Gpt2LmHeadImpl::BranchLayout(LoraBranch b) const {
  return b == LoraBranch::kGlobal ? global_layout_ : residual_layout_;
}

std::vector<float> Gpt2LmHeadImpl::FlattenBranch(LoraBranch b) {
  std::vector<float> flat;
  flat.reserve(static_cast<size_t>(BranchLayout(b).total_size()));
  for (const torch::Tensor& t : BranchParameters(b)) {
    torch::Tensor c = t.detach().contiguous();
    const float* p = c.data_ptr<float>();
    flat.insert(flat.end(), p, p + c.numel());
  }
  return flat;
}

absl::Status Gpt2LmHeadImpl::LoadBranch(LoraBranch b, std::span<const float> flat) {
  const FlatLayout& layout = BranchLayout(b);
  if (layout.num_tensors() == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the ", b == LoraBranch::kGlobal ? "global" : "residual", " LoRA branch is not configured"));
  }
  if (static_cast<int64_t>(flat.size()) != layout.total_size()) {
    return absl::InvalidArgumentError(absl::StrCat("adapter vector has ", flat.size(),
                                                   " values; this model's layout needs ",
                                                   layout.total_size()));
  }
  for (float v : flat) {
    if (!std::isfinite(v)) return absl::InvalidArgumentError("adapter vector holds NaN or Inf");
  }
  torch::NoGradGuard no_grad;
  size_t offset = 0;
  for (torch::Tensor& t : BranchParameters(b)) {
    const auto n = static_cast<size_t>(t.numel());
    t.copy_(torch::from_blob(const_cast<float*>(flat.data() + offset), t.sizes(), torch::kFloat32));
    offset += n;
  }
  return absl::OkStatus();
}

void Gpt2LmHeadImpl::ResetResidual(uint64_t seed) {
  for (LoraConv1D& m : lora_modules_) m->ResetResidual(seed);
}

void Gpt2LmHeadImpl::ResetGlobal() {
  for (LoraConv1D& m : lora_modules_) m->ResetGlobal();
}

void Gpt2LmHeadImpl::Merge() {
  for (LoraConv1D& m : lora_modules_) m->Merge();
}

void Gpt2LmHeadImpl::Unmerge() {
  for (LoraConv1D& m : lora_modules_) m->Unmerge();
}

absl::StatusOr<Gpt2LmHead> CreateGpt2(const ModelConfig& config, const LoraConfig& lora) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (absl::Status s = lora.Validate(); !s.ok()) return s;
  if (absl::Status s = ValidateLoraForModel(config, lora); !s.ok()) return s;
  const double weight_bytes = 4.0 * static_cast<double>(config.NumParameters());
  if (const int64_t available = AvailableMemoryBytes(); available > 0 && weight_bytes > static_cast<double>(available)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the model's %d parameters need %.1f GiB as float32, more than the %.1f GiB of memory available",
        config.NumParameters(), weight_bytes / (1 << 30), static_cast<double>(available) / (1 << 30)));
  }
  try {
    return Gpt2LmHead(config, lora);
  } catch (const c10::Error& e) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot build the model: ", e.what_without_backtrace()));
  }
}

}  // namespace fedpers
