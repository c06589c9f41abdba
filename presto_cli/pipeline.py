"""Text -> latents -> audio, for every model kind (used by generate, eval and bench).

An artefact (see presto_cli/io.py) carries its kind, its DiT and EDM recipes, the embedded codec,
its text encoder, its default sampler/steps/CFG and, for layer-dropping kinds, its layer schedule,
so ``--steps 4`` means the right thing for every kind.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from presto_cli.errors import PrestoError
from presto_cli.io import load_artefact, load_state_strict, sub_state
from presto_cli.names import ASSETS, BUNDLED, check_model_arg

GENERATOR_KINDS = ("teacher", "presto-s", "presto-l", "ase", "presto-ls")
PRECISIONS = ("fp32", "bf16", "fp16")  # the DiT's weights and activations (the codec decodes in fp32)


def inference_defaults(device: torch.device) -> tuple[str, bool]:
    """``(precision, compile)`` when the user names neither. CPU: fp32 eager -- bf16 moves every
    sample (1-7% relative, tests/test_precision.py) and its speed on the 2-core development machine
    was mixed; torch.compile saved 10-15% of Presto-S's 4 steps there while costing 4-42 s per
    process (/work/shared/PERF_NOTES.md). CUDA: bf16 eager -- the paper DiT is trained in bf16 and
    compiling costs tens of seconds per process, so it is opt-in (--compile); not yet measured on
    a GPU by presto (benchmarks/gpu_check.sh measures both)."""
    return ("bf16", False) if torch.device(device).type == "cuda" else ("fp32", False)


def check_precision(precision: str | None, device: torch.device) -> str:
    """The precision to run at (``None``: the device's default); refuses unknown names and fp16 on
    the CPU (slow or unsupported there; bf16 is the CPU's half precision)."""
    if precision is None:
        return inference_defaults(device)[0]
    if precision not in PRECISIONS:
        raise PrestoError(f"unknown precision '{precision}'", f"choose one of: {', '.join(PRECISIONS)}")
    if precision == "fp16" and torch.device(device).type == "cpu":
        raise PrestoError("--precision fp16 is not supported on the CPU", "use --precision bf16 or fp32 there")
    return precision


def bundled_models() -> dict[str, Path]:
    """The bundled demo models that are present in this install."""
    return {n: ASSETS / f for n, f in BUNDLED.items() if (ASSETS / f).is_file()}


def default_model_name() -> str:
    """Presto-LS when bundled (and not marked worse), else Presto-S, else the teacher."""
    have = bundled_models()
    pref = ASSETS / "default.txt"  # written by the results script: the best fast model
    if pref.is_file() and pref.read_text().strip() in have:
        return pref.read_text().strip()
    for n in ("demo-ls", "demo-s", "demo-teacher"):
        if n in have:
            return n
    raise PrestoError("no bundled model is installed", "pass --model PATH to a .safetensors artefact")


def resolve_model(name_or_path: str | None) -> Path:
    if not name_or_path:
        name_or_path = default_model_name()
    if name_or_path in BUNDLED:
        p = ASSETS / BUNDLED[name_or_path]
        if not p.is_file():
            raise PrestoError(f"bundled model '{name_or_path}' is not installed",
                              f"installed: {', '.join(bundled_models()) or 'none'}")
        return p
    check_model_arg(name_or_path)  # a missing file or an unknown name, with a "did you mean"
    p = Path(name_or_path)
    return p / "model.safetensors" if p.is_dir() else p


@dataclass
class SampleSettings:
    sampler: str
    steps: int
    cfg: float
    rho: float
    token_shift: bool = False  # cycle the DiT's token grid per network call (METHOD.md section 2)
    x0_clip: bool = False  # clamp x0 predictions into the training latents' range (METHOD.md section 2)
    cfg_interval: tuple = ()  # (lo, hi): guide only where lo < sigma <= hi; (): at every sigma


class Pipeline:
    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict, device: torch.device,
                 path: Path | None = None, precision: str | None = "fp32", compile: bool = False):
        """``precision`` (fp32 | bf16 | fp16; None: the device's default) casts the DiT's weights,
        so it computes in that dtype (norms and the EDM preconditioning stay in fp32);
        ``compile`` wraps the DiT in ``torch.compile`` (compiled on its first call)."""
        from presto_cli.diffusion.artefact import with_bundled_shared
        from presto_cli.diffusion.edm import EDMConfig, EDMDenoiser
        from presto_cli.models.dit import DiTConfig, DiT
        from presto_cli.recipes import dataclass_from_dict
        from presto_cli.text.encoders import build_text_encoder

        self.path = path
        self.meta = meta
        # a bundled model's caption bank and latent range live once in the assets folder
        tensors, meta = with_bundled_shared(path, tensors, meta, ASSETS)
        self.kind = meta.get("kind")
        if self.kind not in GENERATOR_KINDS:
            raise PrestoError(f"{path} is a '{self.kind}' artefact, not a generator",
                              f"give a model of kind {', '.join(GENERATOR_KINDS)}")
        self.device = device
        net = DiT(dataclass_from_dict(DiTConfig, meta["model"], "model"))
        load_state_strict(net, sub_state(tensors, "dit"), f"{self.kind} model")
        self.edm_cfg = dataclass_from_dict(EDMConfig, meta.get("edm", {}), "edm")
        self.denoiser = EDMDenoiser(net, self.edm_cfg).to(device).eval().requires_grad_(False)
        self.text = build_text_encoder(meta.get("text", "minilm"), device=device)
        self.codec = None
        if meta.get("codec"):
            from presto_cli.codec import codec_from_embedded

            self.codec = codec_from_embedded(sub_state(tensors, "codec"), meta["codec"]).to(device).eval()
        self.bank = self._caption_bank(tensors, meta, path)
        # a text adapter between the encoder and the DiT (text/adapter.py): none unless set_text_adapter() gives one
        self.adapter = None
        self.adapter_source = None
        self.schedule = None  # layer-dropping kinds: the depth each noise level runs at
        if meta.get("schedule"):
            from presto_cli.diffusion.layer_schedule import LayerSchedule

            self.schedule = LayerSchedule.from_dict(meta["schedule"])
        s = meta.get("sampler", {})
        self.default_sampler = s.get("name", self.edm_cfg.sampler)
        self.default_steps = int(s.get("steps", self.edm_cfg.steps))
        self.default_cfg = float(s.get("cfg", self.edm_cfg.cfg))
        self.default_rho = float(s.get("rho", self.edm_cfg.rho))
        self.default_token_shift = bool(s.get("token_shift", self.edm_cfg.token_shift))
        interval = s.get("cfg_interval", self.edm_cfg.cfg_interval)
        self.default_cfg_interval = tuple(float(v) for v in interval) if interval else ()
        self.latent_channels = net.cfg.in_channels
        self.latent_range = self._latent_range(tensors, meta, path)
        # on by default wherever the model knows its training latents' range
        self.default_x0_clip = bool(s.get("x0_clip", True)) and self.latent_range is not None
        self.max_frames = int(meta.get("max_frames", net.cfg.max_frames))
        if self.codec is not None:
            self.sample_rate = int(self.codec.sample_rate)
            self.frame_rate = self.codec.sample_rate / self.codec.hop
        else:  # latent-only model (toy data)
            self.sample_rate = 0
            self.frame_rate = 1.0
        self.default_frames = int(meta.get("frames", self.max_frames))
        self.max_duration = self.max_frames / self.frame_rate
        self.default_duration = self.default_frames / self.frame_rate
        self.audio_channels = int(getattr(self.codec, "audio_channels", 1))
        self.precision = check_precision(precision, device)
        self.compiled = bool(compile)
        if self.precision != "fp32":
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
            self.denoiser.net.to(dtype)
        if self.compiled:
            try:
                self.denoiser.net = torch.compile(self.denoiser.net)
            except Exception as e:  # torch.compile raises many kinds of errors on unsupported setups
                raise PrestoError(f"torch.compile failed: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}", "run without --compile") from None

    def _caption_bank(self, tensors, meta, path):
        """The artefact's caption bank (a bundled model's: the shared assets/demo-captions file)."""
        from presto_cli.text.caption_bank import CaptionBank

        bank = CaptionBank.from_artefact(tensors, meta)
        if bank is not None and bank.text and bank.text != meta.get("text", "minilm"):
            raise PrestoError(f"{path}: its caption bank was encoded with '{bank.text}', the model uses "
                              f"'{meta.get('text', 'minilm')}'", "re-export the model")
        return bank

    def _latent_range(self, tensors, meta, path):
        """The artefact's training-latent range (a bundled model's: the shared assets file)."""
        from presto_cli.diffusion.latent_range import LatentRange

        rng = LatentRange.from_artefact(tensors, meta)
        if rng is not None and rng.channels != self.latent_channels:
            raise PrestoError(f"{path}: its latent range has {rng.channels} channels, the model "
                              f"{self.latent_channels}", "re-export the model")
        return rng

    def set_text_adapter(self, source: str | None) -> None:
        """Put the text adapter in ``source`` (a ``text-adapter`` artefact) between the text encoder and
        the DiT; None, "" or ``"none"``: no adapter (the pipeline is cached, so each caller says)."""
        if not source or str(source).lower() == "none":
            self.adapter, self.adapter_source = None, None
            return
        from presto_cli.io import load_artefact
        from presto_cli.text.adapter import adapter_from_artefact

        p = Path(source)
        if not p.is_file():
            raise PrestoError(f"text adapter not found: {p}", "give a file made by the text-adapter stage, or none")
        tensors, meta = load_artefact(p)
        adapter = adapter_from_artefact(tensors, meta, self.meta.get("text", "minilm"), str(p))
        if adapter is None:
            raise PrestoError(f"{p} holds no text adapter", "give a file made by `presto pretrain` (stage text-adapter)")
        self.adapter, self.adapter_source = adapter.to(self.device), str(p)

    def adapter_digest(self) -> str | None:
        """A short digest of the text adapter in use (its weights), None without one."""
        if self.adapter is None:
            return None
        import hashlib

        h = hashlib.sha256()
        for k, v in sorted(self.adapter.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------------------------
    def settings(self, steps=None, sampler=None, cfg=None, rho=None, token_shift=None,
                 x0_clip=None, cfg_interval=None) -> SampleSettings:
        """The sampling settings: each argument, or the model's default where it is None
        (``cfg_interval``: ``(lo, hi)``, or ``()`` for guidance at every sigma)."""
        from presto_cli.diffusion.samplers import SAMPLERS

        sampler = sampler or self.default_sampler
        if sampler not in SAMPLERS:
            raise PrestoError(f"unknown sampler '{sampler}'", f"choose one of: {', '.join(SAMPLERS)}")
        steps = self.default_steps if steps is None else int(steps)
        if steps < 1:
            raise PrestoError(f"--steps must be at least 1, got {steps}")
        if cfg is None:
            cfg = self.default_cfg
        if self.kind in ("presto-s", "presto-ls") and sampler == "fewstep" and cfg != 1.0:
            raise PrestoError(f"a {self.kind} model has its guidance distilled in",
                              "leave --cfg unset (it runs one evaluation per step)")
        shift = self.default_token_shift if token_shift is None else bool(token_shift)
        clip = self.default_x0_clip if x0_clip is None else bool(x0_clip)
        if clip and self.latent_range is None:
            raise PrestoError("this model does not know its training latents' range, so --x0-clip has no bounds",
                              "leave --x0-clip unset, or re-export the model with `presto pretrain` (it stores the range)")
        if cfg_interval is None:
            interval = self.default_cfg_interval
        else:
            from presto_cli.diffusion.edm import check_cfg_interval

            interval = check_cfg_interval(cfg_interval) if len(cfg_interval) else ()
        return SampleSettings(sampler, steps, float(cfg), float(rho if rho is not None else self.default_rho),
                              shift, clip, interval)

    def nfe(self, steps=None, sampler=None, cfg=None, cfg_interval=None) -> int:
        from presto_cli.diffusion.samplers import get_sigmas, nfe

        s = self.settings(steps, sampler, cfg, cfg_interval=cfg_interval)
        sig = None
        if s.cfg_interval:
            sig = get_sigmas(s.sampler, s.steps, self.edm_cfg.sigma_min, self.edm_cfg.sigma_max, s.rho)
        return nfe(s.sampler, s.steps, s.cfg != 1.0, sig, s.cfg_interval or None)

    def frames_for(self, duration: float | None) -> int:
        if duration is None:
            return self.default_frames
        if duration <= 0:
            raise PrestoError(f"--duration must be positive, got {duration}")
        if duration > self.max_duration + 1e-6:
            raise PrestoError(f"--duration {duration:g}s is longer than this model's trained length "
                              f"({self.max_duration:.2f}s)", f"use --duration {self.max_duration:.2f} or less")
        return max(1, int(round(duration * self.frame_rate)))

    def conditions(self, prompts: list[str], match: bool | None = None) -> list[dict]:
        """What each prompt is conditioned on: ``{"condition": text, "match_similarity": cosine to the
        nearest training caption, or None}``. ``match`` None (default): the nearest training caption
        when the prompt is unlike every training wording (below the bank's threshold; see
        text/caption_bank.py), else the prompt; True: always the nearest caption; False: the prompt.
        A prompt whose nearest caption lies below the bank's floor is kept as written either way."""
        return self._conditions(prompts, match)[0]

    def _conditions(self, prompts: list[str], match: bool | None):
        """:meth:`conditions` and the text encoder's output for the prompts as written (None when
        it was not needed), so a prompt kept as written is encoded once."""
        self._check_prompts(prompts)
        if match is False or (match is None and self.bank is None):
            return [{"condition": p, "match_similarity": None} for p in prompts], None
        if self.bank is None:
            raise PrestoError("this model carries no caption bank to match prompts against",
                              "leave out --match (its prompts are used as written)")
        with torch.no_grad():
            enc = self.text(list(prompts))
        idx, sim = self.bank.match(enc[2])
        floor = self.bank.floor  # a prompt no caption is near is kept as written, with --match too
        return [{"condition": self.bank.captions[i] if (match or s < self.bank.threshold) and s >= floor else p,
                 "match_similarity": round(float(s), 4)} for p, i, s in zip(prompts, idx, sim)], enc

    @staticmethod
    def _check_prompts(prompts: list[str]) -> None:
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise PrestoError("empty prompt", "give a text description such as \"jazz trio\"")

    @property
    def tempo_cond(self) -> bool:
        return bool(self.denoiser.net.cfg.tempo_cond)

    @property
    def key_cond(self) -> bool:
        return bool(self.denoiser.net.cfg.key_cond)

    def tempo_key(self, prompts: list[str], bpm: float | None = None, key: int | str | None = None
                  ) -> list[dict]:
        """Per prompt ``{"asked": {"bpm", "key"}, "used": {"bpm", "key"} or None}``: asked is the BPM
        and key written in the prompt as typed (text/musical.py), ``bpm``/``key`` overriding them;
        used is what reaches the model (a value only where the model has that condition; None when
        it has neither). Bad ``bpm``/``key`` values raise a PrestoError naming them."""
        from presto_cli.text.musical import check_bpm, check_key, key_name, parse_prompt

        bpm = check_bpm(bpm)
        key_i = check_key(key) if isinstance(key, str) else key
        out = []
        for p in prompts:
            pb, pk = parse_prompt(p)
            b = bpm if bpm is not None else pb
            k = key_i if key_i is not None else pk
            asked = {"bpm": None if b is None else round(float(b), 3), "key": key_name(k)}
            used = None
            if self.tempo_cond or self.key_cond:
                used = {"bpm": asked["bpm"] if self.tempo_cond else None,
                        "key": asked["key"] if self.key_cond else None}
            out.append({"asked": asked, "used": used, "_bpm": b, "_key": k})
        return out

    def encode_text(self, prompts: list[str], match: bool | None = False, conditions: list | None = None,
                    bpm: float | None = None, key: int | str | None = None):
        """The condition of ``prompts``: as written by default; ``match`` as in :meth:`conditions`,
        whose records are appended to ``conditions`` when a list is given (with ``asked``/``used``
        tempo and key, :meth:`tempo_key`). A BPM and key written in a prompt (or given as ``bpm``/
        ``key``, which override them) reach a model with tempo/key conditions."""
        from presto_cli.diffusion.edm import Cond

        musical = self.tempo_key(list(prompts), bpm, key)
        conds, enc = self._conditions(list(prompts), match)
        if conditions is not None:
            conditions.extend({**c, "asked": m["asked"], "used": m["used"], "text_adapter": self.adapter_source}
                              for c, m in zip(conds, musical))
        texts = [c["condition"] for c in conds]
        with torch.no_grad():
            tokens, mask, pooled = enc if enc is not None and texts == list(prompts) else self.text(texts)
            if self.adapter is not None:
                tokens, mask, pooled = self.adapter(tokens.to(self.device), mask.to(self.device), pooled.to(self.device))
        tempo = keys = None
        if self.tempo_cond:
            tempo = torch.tensor([float("nan") if m["_bpm"] is None else float(m["_bpm"]) for m in musical],
                                 dtype=torch.float32, device=self.device)
        if self.key_cond:
            keys = torch.tensor([-1 if m["_key"] is None else int(m["_key"]) for m in musical],
                                dtype=torch.long, device=self.device)
        return Cond(tokens=tokens.to(self.device), mask=mask.to(self.device), pooled=pooled.to(self.device),
                    tempo=tempo, key=keys)

    def model_fn(self, cond, s: SampleSettings) -> Callable:
        """The samplers' ``model_fn``: the denoiser (at the layer schedule's depths, when the model
        has one), guided with ``s.cfg``."""
        from presto_cli.diffusion.edm import denoise_fn
        from presto_cli.diffusion.layered import LayeredDenoiser

        den = self.denoiser if self.schedule is None else LayeredDenoiser(self.denoiser, self.schedule)
        fn = denoise_fn(den, cond, s.cfg, s.cfg_interval or None)
        if s.token_shift:
            from presto_cli.diffusion.edm import token_shifted

            net_cfg = self.denoiser.net.cfg
            fn = token_shifted(fn, int(net_cfg.patch), pass_offset=net_cfg.tempo_phase)
        if s.x0_clip:
            from presto_cli.diffusion.latent_range import x0_clipped

            fn = x0_clipped(fn, self.latent_range)
        return fn

    @torch.no_grad()
    def sample_latents(self, prompts: list[str], seeds: list[int], steps=None, sampler=None, cfg=None,
                       duration=None, rho=None, progress: bool = False, callback=None,
                       match: bool | None = None, conditions: list | None = None,
                       token_shift: bool | None = None, bpm: float | None = None,
                       key: int | str | None = None, x0_clip: bool | None = None,
                       cfg_interval: tuple | None = None) -> torch.Tensor:
        """Latents [B, C, F]; ``match``: see :meth:`conditions` (None: prompts unlike every training
        wording are replaced by their nearest training caption, when the model carries a caption bank);
        what each prompt was conditioned on is appended to ``conditions`` when a list is given;
        ``bpm``/``key`` override a tempo/key written in the prompts (:meth:`encode_text`); ``x0_clip``
        (None: the model's default) clamps x0 predictions into the training latents' range;
        ``cfg_interval`` as in :meth:`settings`."""
        from presto_cli.diffusion.samplers import SAMPLERS, PerSampleNoise, get_sigmas

        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")
        s = self.settings(steps, sampler, cfg, rho, token_shift, x0_clip, cfg_interval)
        frames = self.frames_for(duration)
        cond = self.encode_text(list(prompts), match, conditions, bpm, key)
        noise = PerSampleNoise(list(seeds), self.device)
        sigmas = get_sigmas(s.sampler, s.steps, self.edm_cfg.sigma_min, self.edm_cfg.sigma_max, s.rho,
                            device=self.device)
        x = noise.randn((self.latent_channels, frames)) * sigmas[0]
        return SAMPLERS[s.sampler](self.model_fn(cond, s), x, sigmas, noise=noise, disable=not progress,
                                         callback=callback)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Audio ``[B, audio_channels, T]`` in fp32."""
        if self.codec is None:
            raise PrestoError("this model has no codec embedded, so it makes latents, not audio")
        return self.codec.decode(latents).float().clamp(-1, 1)

    def generate(self, prompts: list[str], seeds: list[int], steps=None, sampler=None, cfg=None,
                 duration=None, rho=None, progress: bool = False, callback=None,
                 match: bool | None = None, conditions: list | None = None,
                 token_shift: bool | None = None, bpm: float | None = None,
                 key: int | str | None = None, x0_clip: bool | None = None,
                 cfg_interval: tuple | None = None) -> torch.Tensor:
        """Audio [B, audio_channels, T]; ``callback(info)`` is called after each sampler step (``info["i"]``);
        ``match``, ``conditions``, ``bpm``, ``key``, ``x0_clip`` and ``cfg_interval`` as in :meth:`sample_latents`."""
        return self.decode(self.sample_latents(prompts, seeds, steps, sampler, cfg, duration, rho, progress,
                                               callback, match, conditions, token_shift, bpm, key, x0_clip,
                                               cfg_interval))


_CACHE: dict[tuple, Pipeline] = {}


def load_pipeline(name_or_path: str | None = None, device: str | torch.device = "auto",
                  precision: str | None = None, compile: bool | None = None) -> Pipeline:
    """The model's pipeline on ``device`` at ``precision`` (None: the device's default, see
    :func:`inference_defaults`), compiled when ``compile`` (None: the device's default)."""
    from presto_cli.runtime import resolve_device

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    precision = check_precision(precision, dev)
    compile = inference_defaults(dev)[1] if compile is None else bool(compile)
    path = resolve_model(name_or_path)
    key = (str(path.resolve()), path.stat().st_mtime_ns, str(dev), precision, compile)
    if key not in _CACHE:
        tensors, meta = load_artefact(path)
        _CACHE.clear()
        _CACHE[key] = Pipeline(tensors, meta, dev, path, precision, compile)
    return _CACHE[key]
