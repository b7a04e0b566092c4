#!/usr/bin/python3
"""The reference GPTQ flow (IST-DASLab/gptq, llama.py's --true-sequential loop) on a LLaMA GGUF.

The reference reads Hugging Face checkpoints through transformers, which Debian 12 does not
package. This driver runs the same loop on the GGUF that wmat quantizes, with the reference's own
GPTQ and Quantizer classes (gptq.py, quant.py, imported unchanged from --ref-dir, a checkout of
https://github.com/IST-DASLab/gptq) and a LLaMA decoder layer written here in torch:

  - the first block's inputs of every calibration window are the token embeddings (llama.py's
    Catcher);
  - per block, the true-sequential groups [k, v, q], [o], [up, gate], [down]: forward hooks feed
    GPTQ.add_batch over every window, then fasterquant(blocksize=128, percdamp, groupsize,
    actorder=False) per matrix, which writes the fake-quantized weights into the layer;
  - the block's outputs for the next block come from a last forward of the quantized block.

Only what the reference does not provide is written here: the GGUF reader (f32 and f16 tensors),
the decoder layer (RMSNorm, rotary embedding on the GGUF's row order, grouped-query attention,
SwiGLU) and the timing. Two shims make the reference run on a CPU-only torch without
transformers: gptq.py imports transformers only to test isinstance(layer, transformers.Conv1D)
(a stub class answers no), and calls torch.cuda.synchronize() after each matrix (a no-op here).

Prints per stage: the calibration forward, the method (fasterquant) and the total, and the peak RSS.
usage: llama_gguf_seq.py MODEL.gguf CALIB.u16 --ref-dir DIR [--nsamples 64] [--seqlen 256]
       [--wbits 4] [--groupsize 128] [--percdamp 0.01] [--threads 2] [--blocks N]
"""
import argparse
import os
import resource
import struct
import sys
import time
import types

import numpy as np


def read_gguf(path):
    """Metadata and {name: numpy array} (mapped; f32 and f16 only) of a GGUF file."""
    f = open(path, "rb")
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("Q")
        s = bytes(buf[pos:pos + n]).decode("utf-8")
        pos += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t in scalar:
            return take(scalar[t])
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        raise ValueError("%s: metadata type %d" % (path, t))

    if bytes(buf[:4]) != b"GGUF":
        raise ValueError("%s: not a GGUF file" % path)
    pos = 4
    version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    if version < 2:
        raise ValueError("%s: GGUF version %d" % (path, version))
    meta = {}
    for _ in range(n_kv):
        k = string()
        meta[k] = value(take("I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        nd = take("I")
        dims = [take("Q") for _ in range(nd)]
        infos.append((name, dims, take("I"), take("Q")))
    align = meta.get("general.alignment", 32)
    data = (pos + align - 1) // align * align
    tensors = {}
    for name, dims, t, off in infos:
        if t not in (0, 1):
            raise ValueError("%s: tensor %s has ggml type %d; this driver reads f32 and f16 GGUFs" % (path, name, t))
        dt = np.float32 if t == 0 else np.float16
        n = int(np.prod(dims))
        a = np.frombuffer(buf, dtype=dt, count=n, offset=data + off)
        tensors[name] = a.reshape(list(reversed(dims)))
    f.close()
    return meta, tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("calib")
    ap.add_argument("--ref-dir", required=True, help="checkout of github.com/IST-DASLab/gptq")
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--wbits", type=int, default=4)
    ap.add_argument("--groupsize", type=int, default=128)
    ap.add_argument("--percdamp", type=float, default=0.01)
    ap.add_argument("--sym", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=0, help="quantize blocks 0..N-1 only (0: all)")
    ap.add_argument("--no-quant", action="store_true", help="run the blocks unquantized (checks the driver's forward)")
    ap.add_argument("--ppl", action="store_true",
                    help="then the perplexity of the calibration windows (every block, quantized or not), as "
                         "`wmat eval --tokens CALIB --ctx SEQLEN --max-windows NSAMPLES` scores them")
    args = ap.parse_args()
    t_start = time.time()

    import torch
    import torch.nn as nn
    torch.set_num_threads(args.threads)
    # the two shims (module docstring)
    stub = types.ModuleType("transformers")
    stub.Conv1D = type("Conv1D", (), {})
    sys.modules.setdefault("transformers", stub)
    torch.cuda.synchronize = lambda *a, **k: None
    sys.path.insert(0, args.ref_dir)
    from gptq import GPTQ
    from quant import Quantizer

    meta, T = read_gguf(args.model)
    arch = meta.get("general.architecture", "llama")
    dim = meta[arch + ".embedding_length"]
    n_layers = meta[arch + ".block_count"]
    n_heads = meta[arch + ".attention.head_count"]
    n_kv = meta.get(arch + ".attention.head_count_kv", n_heads)
    eps = meta.get(arch + ".attention.layer_norm_rms_epsilon", 1e-5)
    theta = meta.get(arch + ".rope.freq_base", 10000.0)
    hd = dim // n_heads

    def W(name):
        return torch.from_numpy(np.ascontiguousarray(T[name], dtype=np.float32))

    # rotary embedding in the GGUF's row order: llama.cpp's rope on adjacent pairs (2i, 2i+1)
    pos = torch.arange(args.seqlen, dtype=torch.float32)
    inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = pos[:, None] * inv[None, :]
    cos, sin = torch.cos(ang), torch.sin(ang)

    def rope(x):  # (heads, T, hd)
        x2 = x.view(*x.shape[:-1], hd // 2, 2)
        a, b = x2[..., 0], x2[..., 1]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(dim, n_heads * hd, bias=False)
            self.k_proj = nn.Linear(dim, n_kv * hd, bias=False)
            self.v_proj = nn.Linear(dim, n_kv * hd, bias=False)
            self.o_proj = nn.Linear(n_heads * hd, dim, bias=False)

        def forward(self, x):  # (T, dim)
            t = x.shape[0]
            q = rope(self.q_proj(x).view(t, n_heads, hd).transpose(0, 1))
            k = rope(self.k_proj(x).view(t, n_kv, hd).transpose(0, 1))
            v = self.v_proj(x).view(t, n_kv, hd).transpose(0, 1)
            rep = n_heads // n_kv
            k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
            s = q @ k.transpose(1, 2) / hd ** 0.5
            s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
            o = torch.softmax(s, dim=-1) @ v
            return self.o_proj(o.transpose(0, 1).reshape(t, n_heads * hd))

    class MLP(nn.Module):
        def __init__(self, hidden):
            super().__init__()
            self.gate_proj = nn.Linear(dim, hidden, bias=False)
            self.up_proj = nn.Linear(dim, hidden, bias=False)
            self.down_proj = nn.Linear(hidden, dim, bias=False)

        def forward(self, x):
            return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    class Block(nn.Module):
        def __init__(self, i):
            super().__init__()
            p = "blk.%d." % i
            self.self_attn = Attn()
            self.mlp = MLP(T[p + "ffn_up.weight"].shape[0])
            for mod, name in ((self.self_attn.q_proj, "attn_q"), (self.self_attn.k_proj, "attn_k"),
                              (self.self_attn.v_proj, "attn_v"), (self.self_attn.o_proj, "attn_output"),
                              (self.mlp.gate_proj, "ffn_gate"), (self.mlp.up_proj, "ffn_up"),
                              (self.mlp.down_proj, "ffn_down")):
                mod.weight.data = W(p + name + ".weight")
            self.g_attn = W(p + "attn_norm.weight")
            self.g_ffn = W(p + "ffn_norm.weight")

        def forward(self, x):
            h = x + self.self_attn(rms(x, self.g_attn))
            return h + self.mlp(rms(h, self.g_ffn))

    ids = np.fromfile(args.calib, dtype="<u2").astype(np.int64)
    need = args.nsamples * args.seqlen
    if ids.size < need:
        sys.exit("%s: %d tokens, fewer than %d windows of %d" % (args.calib, ids.size, args.nsamples, args.seqlen))
    emb = T["token_embd.weight"]
    with torch.no_grad():
        inps = torch.from_numpy(np.asarray(emb[ids[:need]], dtype=np.float32)).view(args.nsamples, args.seqlen, dim)
        outs = torch.zeros_like(inps)
        blocks = n_layers if args.ppl else (args.blocks or n_layers)
        quant_blocks = 0 if args.no_quant else (args.blocks or n_layers)
        t_fwd = t_method = 0.0
        sequential = [["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"], ["self_attn.o_proj"],
                      ["mlp.up_proj", "mlp.gate_proj"], ["mlp.down_proj"]]
        for i in range(blocks):
            layer = Block(i)
            full = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
            for names in (sequential if i < quant_blocks else []):
                gptq = {}
                for n in names:
                    gptq[n] = GPTQ(full[n])
                    gptq[n].quantizer = Quantizer()
                    gptq[n].quantizer.configure(args.wbits, perchannel=True, sym=args.sym, mse=False)
                handles = [full[n].register_forward_hook(
                    (lambda n: lambda _, inp, out: gptq[n].add_batch(inp[0].data, out.data))(n)) for n in names]
                t0 = time.time()
                for j in range(args.nsamples):
                    outs[j] = layer(inps[j])
                t_fwd += time.time() - t0
                for h in handles:
                    h.remove()
                for n in names:
                    t0 = time.time()
                    gptq[n].fasterquant(percdamp=args.percdamp, groupsize=args.groupsize, actorder=False)
                    t_method += time.time() - t0
                    gptq[n].free()
            t0 = time.time()
            for j in range(args.nsamples):
                outs[j] = layer(inps[j])
            t_fwd += time.time() - t0
            inps, outs = outs, inps
            print("block %d/%d done, %.1f s" % (i + 1, blocks, time.time() - t_start), file=sys.stderr, flush=True)
        if args.ppl:
            # inps holds the last block's outputs; the windows' own next tokens are the targets
            h = rms(inps, W("output_norm.weight"))
            head = W("output.weight") if "output.weight" in T else W("token_embd.weight")
            nll, count = 0.0, 0
            for j in range(args.nsamples):
                logits = h[j] @ head.T
                tgt = torch.from_numpy(ids[j * args.seqlen + 1:(j + 1) * args.seqlen + 1])
                n = min(tgt.shape[0], args.seqlen)
                nll += torch.nn.functional.cross_entropy(logits[:n], tgt[:n], reduction="sum").item()
                count += n
            print("perplexity %.6f over %d windows of %d (%d blocks quantized)"
                  % (np.exp(nll / count), args.nsamples, args.seqlen, quant_blocks))
    total = time.time() - t_start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("reference breakdown: calibration forward %.2f s, method (fasterquant) %.2f s, total %.2f s, peak RSS %d KB, "
          "%d blocks, %d x %d tokens, %d bits, groups of %d, %d threads"
          % (t_fwd, t_method, total, rss, blocks, args.nsamples, args.seqlen, args.wbits, args.groupsize, args.threads))


if __name__ == "__main__":
    main()
