// Python binding of the CUDA kernel: the same call as the Cython CPU kernel (fffconvert/kernels.py).
#include <torch/extension.h>

void fff_forward_cuda(const torch::Tensor& x, torch::Tensor& out, const torch::Tensor& nw, const torch::Tensor& nb,
                      const torch::Tensor& w1, const torch::Tensor& b1, const torch::Tensor& w2,
                      const torch::Tensor& lb, const torch::Tensor& ob, int act);

static int activation_code(const std::string& name) {
  if (name == "gelu") return 0;
  if (name == "gelu_tanh") return 1;
  if (name == "relu") return 2;
  if (name == "silu") return 3;
  TORCH_CHECK(false, "fff_forward: unknown activation ", name);
}

torch::Tensor fff_forward(const torch::Tensor& x, const torch::Tensor& node_weight, const torch::Tensor& node_bias,
                          const torch::Tensor& w1, const torch::Tensor& b1, const torch::Tensor& w2,
                          const torch::Tensor& leaf_bias, const torch::Tensor& out_bias, const std::string& activation,
                          c10::optional<torch::Tensor> out) {
  TORCH_CHECK(x.dim() >= 1, "fff_forward: x must be [..., H]");
  const int64_t H = x.size(-1);
  const auto n_nodes = node_weight.size(0);
  TORCH_CHECK(n_nodes >= 1 && ((n_nodes + 1) & n_nodes) == 0, "fff_forward: node_weight must have 2^D - 1 rows");
  TORCH_CHECK(node_weight.size(1) == H && w1.size(2) == H && w2.size(2) == H && leaf_bias.size(1) == H &&
                  out_bias.size(0) == H && w1.size(0) == n_nodes + 1,
              "fff_forward: weight shapes do not match the layout in fffconvert/layer.py");
  for (const torch::Tensor* t : std::initializer_list<const torch::Tensor*>{&x, &node_weight, &node_bias, &w1, &b1, &w2, &leaf_bias, &out_bias}) {
    TORCH_CHECK(t->is_cuda() && t->device() == x.device(), "fff_forward: all tensors must be on x's CUDA device");
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "fff_forward: all tensors must have x's dtype");
    TORCH_CHECK(t->is_contiguous(), "fff_forward: all tensors must be contiguous");
  }
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              "fff_forward: dtype must be float32, float16 or bfloat16");
  torch::Tensor y = out.has_value() ? *out : torch::empty_like(x);
  TORCH_CHECK(y.sizes() == x.sizes() && y.scalar_type() == x.scalar_type() && y.is_contiguous() &&
                  y.device() == x.device(), "fff_forward: out must be a contiguous tensor like x");
  torch::Tensor y2 = y.view({-1, H});  // the kernel sees tokens as rows
  fff_forward_cuda(x.view({-1, H}), y2, node_weight, node_bias, w1, b1, w2, leaf_bias, out_bias,
                   activation_code(activation));
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fff_forward", &fff_forward, "Hard forward of an FFF layer (CUDA)", py::arg("x"), py::arg("node_weight"),
        py::arg("node_bias"), py::arg("w1"), py::arg("b1"), py::arg("w2"), py::arg("leaf_bias"),
        py::arg("out_bias"), py::arg("activation"), py::arg("out") = py::none());
}
