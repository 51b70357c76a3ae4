"""Real architectures as small torch modules, exported the way users' raw exports look.

torchvision does not import beside the CPU torch used here, so the networks are written
out: a ResNet (bottleneck blocks; ``resnet50()`` is the real layout), a MobileNet-style
net (depthwise convs, ReLU6, Hardswish), a ConvNeXt-style net (depthwise 7x7, LayerNorm,
GELU), a BERT-style encoder (embeddings, attention mask, LayerNorm, GELU) and a GPT-2-style
decoder (fused QKV through GPT-2's Conv1D/addmm, causal mask sliced from a buffer, tanh
GELU, tied LM head). Exports use ``dynamo=False, do_constant_folding=False`` and opset 14,
which keeps BatchNorm, Identity, shape chains and the decomposed LayerNorm/GELU that
fusekit must clean up.

    python examples/zoo.py resnet50 resnet50.onnx
"""

from __future__ import annotations

import argparse
import warnings
from typing import Callable

import torch
from torch import nn


def _randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Give BN layers non-trivial statistics, so folding them is really tested."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model.eval()


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), base: int = 64, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], base
        for i, count in enumerate(layers):
            width = base * 2 ** i
            for j in range(count):
                blocks.append(Bottleneck(cin, width, 2 if j == 0 and i > 0 else 1))
                cin = width * 4
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, act: type[nn.Module]) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), act(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.use_res else self.body(x)


class MobileNet(nn.Module):
    def __init__(self, width: int = 16, classes: int = 100) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())
        cfg = [(width, 1, 1, nn.ReLU6), (width * 2, 2, 4, nn.ReLU6), (width * 2, 1, 4, nn.Hardswish),
               (width * 4, 2, 4, nn.Hardswish), (width * 4, 1, 4, nn.Hardswish)]
        layers, cin = [], width
        for cout, stride, expand, act in cfg:
            layers.append(InvertedResidual(cin, cout, stride, expand, act))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Conv2d(cin, cin * 4, 1, bias=False), nn.BatchNorm2d(cin * 4), nn.Hardswish())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(cin * 4, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.features(self.stem(x)))
        return self.classifier(x.mean((2, 3)))


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1, self.pw2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(nn.functional.gelu(self.pw1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, dims: tuple[int, ...] = (32, 64, 128), depth: int = 2, classes: int = 100) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dims[0], 4, 4)
        stages = []
        for i, dim in enumerate(dims):
            if i:
                stages.append(nn.Conv2d(dims[i - 1], dim, 2, 2))
            stages.extend(ConvNeXtBlock(dim) for _ in range(depth))
        self.stages = nn.Sequential(*stages)
        self.norm, self.fc = nn.LayerNorm(dims[-1]), nn.Linear(dims[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.stages(self.stem(x)).mean((2, 3))))


class EncoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.out, self.norm1 = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=1e-12)
        self.ff1, self.ff2 = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-12)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        return x.view(b, s, self.heads, h // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        scores = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5) + mask
        ctx = torch.softmax(scores, -1) @ v
        b, _, s, _ = ctx.shape
        x = self.norm1(x + self.out(ctx.transpose(1, 2).reshape(b, s, -1)))
        return self.norm2(x + self.ff2(nn.functional.gelu(self.ff1(x))))


class Encoder(nn.Module):
    """BERT-style: word + position + token-type embeddings, mask, N encoder layers, pooler."""

    def __init__(self, vocab: int = 1000, hidden: int = 64, layers: int = 2, heads: int = 4,
                 max_len: int = 128) -> None:
        super().__init__()
        self.words, self.positions = nn.Embedding(vocab, hidden), nn.Embedding(max_len, hidden)
        self.types = nn.Embedding(2, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq = input_ids.shape[1]
        positions = torch.arange(seq, dtype=torch.long).unsqueeze(0).expand_as(input_ids)
        x = self.norm(self.words(input_ids) + self.positions(positions) + self.types(torch.zeros_like(input_ids)))
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        return x, torch.tanh(self.pooler(x[:, 0]))


class Conv1D(nn.Module):
    """GPT-2's linear layer: ``addmm`` on the flattened input, weight stored [in, out]."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cin, cout) * 0.02)
        self.bias = nn.Parameter(torch.randn(cout) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.size()[:-1] + (self.weight.size(-1),)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(shape)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's ``gelu_new``, written out as the original code does (Pow, Tanh)."""
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * torch.pow(x, 3.0))))


class DecoderBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(hidden, eps=1e-5), nn.LayerNorm(hidden, eps=1e-5)
        self.qkv, self.proj = Conv1D(hidden, 3 * hidden), Conv1D(hidden, hidden)
        self.fc, self.fc_proj = Conv1D(hidden, 4 * hidden), Conv1D(4 * hidden, hidden)
        self.register_buffer("causal", torch.tril(torch.ones(max_len, max_len, dtype=torch.bool))
                             .view(1, 1, max_len, max_len), persistent=False)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.size()[:-1] + (self.heads, x.size(-1) // self.heads)
        return x.view(shape).permute(0, 2, 1, 3)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).split(x.size(-1), dim=2)
        q, k, v = self.split(q), self.split(k), self.split(v)
        scores = torch.matmul(q, k.transpose(-1, -2)) / torch.full([], v.size(-1) ** 0.5, dtype=q.dtype)
        q_len, k_len = q.size(-2), k.size(-2)
        mask = self.causal[:, :, k_len - q_len:k_len, :k_len]
        scores = torch.where(mask, scores, torch.full([], torch.finfo(scores.dtype).min, dtype=scores.dtype))
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).contiguous()
        return self.proj(ctx.view(ctx.size()[:-2] + (ctx.size(-2) * ctx.size(-1),)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln1(x))
        return x + self.fc_proj(gelu_tanh(self.fc(self.ln2(x))))


class Decoder(nn.Module):
    """GPT-2-style: token + position embeddings, N pre-norm causal blocks, final LayerNorm,
    LM head tied to the token embedding."""

    def __init__(self, vocab: int = 1000, hidden: int = 64, layers: int = 2, heads: int = 4,
                 max_len: int = 128) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, hidden), nn.Embedding(max_len, hidden)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.01)
        self.blocks = nn.ModuleList(DecoderBlock(hidden, heads, max_len) for _ in range(layers))
        self.ln_f = nn.LayerNorm(hidden, eps=1e-5)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        with torch.no_grad():  # trained-looking norms: no Mul by 1 or Add of 0 to remove
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.copy_(1 + 0.1 * torch.randn(hidden))
                    m.bias.copy_(0.1 * torch.randn(hidden))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(0, input_ids.size(-1), dtype=torch.long).unsqueeze(0)
        x = self.wte(input_ids) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


IMAGE_MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet-tiny": lambda: ResNet((1, 1, 1, 1), base=8, classes=10),
    "resnet50": lambda: ResNet(),
    "mobilenet": lambda: MobileNet(),
    "convnext": lambda: ConvNeXt(),
}
ENCODER_MODELS: dict[str, Callable[[], nn.Module]] = {
    "encoder-tiny": lambda: Encoder(),
    "bert-base": lambda: Encoder(vocab=30522, hidden=768, layers=12, heads=12, max_len=512),
}
DECODER_MODELS: dict[str, Callable[[], nn.Module]] = {
    "decoder-tiny": lambda: Decoder(),
    "gpt2": lambda: Decoder(vocab=50257, hidden=768, layers=12, heads=12, max_len=1024),
}


MODELS = [*IMAGE_MODELS, *ENCODER_MODELS, *DECODER_MODELS]


def export_image_model(model: nn.Module, path: str, size: int = 64, opset: int = 14) -> None:
    """Raw export with a dynamic batch: input ``images`` [batch,3,H,W], output ``logits``."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_randomize_batchnorm(model), (torch.randn(2, 3, size, size),), path, dynamo=False,
                          do_constant_folding=False, opset_version=opset, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})


def export_encoder(model: nn.Module, path: str, seq: int = 16, opset: int = 14) -> None:
    """Raw export with dynamic batch and sequence: inputs ``input_ids``, ``attention_mask``."""
    torch.manual_seed(0)
    model.eval()
    ids = torch.randint(0, 100, (2, seq))
    mask = torch.ones(2, seq, dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
            "hidden": {0: "batch", 1: "seq"}, "pooled": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, mask), path, dynamo=False, do_constant_folding=False, opset_version=opset,
                          input_names=["input_ids", "attention_mask"], output_names=["hidden", "pooled"],
                          dynamic_axes=axes)


def export_decoder(model: nn.Module, path: str, seq: int = 16, opset: int = 14) -> None:
    """Raw export with dynamic batch and sequence: input ``input_ids``, output ``logits``."""
    torch.manual_seed(0)
    model.eval()
    ids = torch.randint(0, 100, (2, seq))
    axes = {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids,), path, dynamo=False, do_constant_folding=False, opset_version=opset,
                          input_names=["input_ids"], output_names=["logits"], dynamic_axes=axes)


def export(name: str, path: str) -> None:
    if name in IMAGE_MODELS:
        export_image_model(IMAGE_MODELS[name](), path, size=224 if name == "resnet50" else 64)
    elif name in ENCODER_MODELS:
        export_encoder(ENCODER_MODELS[name](), path, seq=128 if name == "bert-base" else 16)
    elif name in DECODER_MODELS:
        export_decoder(DECODER_MODELS[name](), path, seq=128 if name == "gpt2" else 16)
    else:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=MODELS)
    parser.add_argument("output")
    args = parser.parse_args()
    export(args.name, args.output)
    print(f"wrote {args.output}")
