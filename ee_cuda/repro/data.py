"""Offline datasets in the paper's zero-shot protocol, and the P x K batch sampler.

Both datasets split their *classes* into disjoint train and test halves (as CUB/Cars/SOP are split in the
paper), so the test measures retrieval and clustering of classes never seen in training.

- ``load_glyphs``: the fine-grained set of the verdicts, rendered from real font files shipped with
  matplotlib and the OS (DejaVu, STIX, Computer Modern). A class is a character (Latin, digits, Greek,
  Cyrillic, symbols) in one font family (sans, serif, mono); its instances are that character in the
  family's fonts, with random jitter of size, rotation and position. The same character in two families
  is two classes. Rendered with FreeType through ``matplotlib.ft2font``; cached as ``.npz``.
- ``load_digits``: scikit-learn's handwritten digits (1797 real 8x8 scans shipped with scikit-learn);
  train on digits 0-4, test on 5-9. Ten classes: a smoke set.
- ``PKSampler``: batches of ``P`` classes x ``K`` instances with each class's rows contiguous, so with
  an even ``K`` rows ``2k`` and ``2k+1`` share a label (the adjacent-pair layout HPHN needs).
"""
from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Dataset", "FAMILIES", "load_digits", "load_glyphs", "load_dataset", "PKSampler", "font_family",
           "font_files", "glyph_classes", "render_glyphs", "occlude"]


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # (N, 1, H, W) float32 in [0, 1]
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list = field(default_factory=list)

    def fingerprint(self) -> str:
        """A short hash of the images, labels and split: a stored run is reused only on the same data."""
        h = hashlib.sha1(self.name.encode())
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:12]

    def describe(self) -> dict:
        return {"name": self.name, "image_size": list(self.x_train.shape[-2:]),
                "train_classes": int(self.y_train.unique().numel()), "train_images": int(self.y_train.numel()),
                "test_classes": int(self.y_test.unique().numel()), "test_images": int(self.y_test.numel())}


def _split(x: np.ndarray, y: np.ndarray, train_classes: np.ndarray, name: str, names) -> Dataset:
    is_train = np.isin(y, train_classes)
    tx = torch.from_numpy(x[:, None].astype(np.float32))
    ty = torch.from_numpy(y.astype(np.int64))
    mask = torch.from_numpy(is_train)
    return Dataset(name, tx[mask], ty[mask], tx[~mask], ty[~mask], list(names))


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits, scaled to [0, 1]; classes 0-4 train, 5-9 test."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = d.images.astype(np.float32) / 16.0
    return _split(x, d.target, np.arange(5), "digits", [str(i) for i in range(10)])


# --------------------------------------------------------------------------------------------- glyphs

FAMILIES = ("sans", "serif", "mono")


def font_family(path: str):
    """``"sans"``, ``"serif"``, ``"mono"`` or ``None``: the family a font file of matplotlib or the OS
    belongs to (DejaVu Sans/Serif/Sans Mono with their condensed faces, STIX General, Computer Modern)."""
    base = os.path.basename(path)
    if base.startswith("DejaVuSansMono") or base == "cmtt10.ttf":
        return "mono"
    if base.startswith("DejaVuSans") or base == "cmss10.ttf":
        return "sans"
    if base.startswith(("DejaVuSerif", "STIXGeneral")) or base in ("cmr10.ttf", "cmb10.ttf", "cmti10.ttf"):
        return "serif"
    return None


def font_files() -> dict:
    """``{family: [font file, ...]}``: one file per distinct (family name, style) among the text fonts
    shipped with matplotlib and the OS (see ``font_family``)."""
    import matplotlib
    from matplotlib import ft2font

    candidates = sorted(glob.glob(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "*.ttf")))
    candidates += sorted(glob.glob("/usr/share/fonts/truetype/**/*.ttf", recursive=True))
    keep, seen = {f: [] for f in FAMILIES}, set()
    for path in candidates:
        family = font_family(path)
        if family is None:
            continue
        try:
            f = ft2font.FT2Font(path)
        except Exception:  # pragma: no cover - unreadable font file
            continue
        key = (f.family_name, f.style_name)
        if key in seen or f.num_glyphs < 100:
            continue
        seen.add(key)
        keep[family].append(path)
    return keep


def _candidate_chars() -> list:
    chars = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    chars += [str(i) for i in range(10)]
    chars += [chr(c) for c in range(0x391, 0x3AA) if c != 0x3A2]  # Greek capitals
    chars += [chr(c) for c in range(0x3B1, 0x3CA)]  # Greek small
    chars += [chr(c) for c in range(0x410, 0x450)]  # Cyrillic basic
    chars += list("#$%&@?!+=<>*§¶£¥€¢©®±×÷¿¡µßæøðþ∞∑∏√∫∂∇∈∩∪⊂⊃∀∃¬∧∨≈≠≤≥←→↑↓↔♠♣♥♦★☆")
    return chars


def _render(font, ch: str, px: float, angle: float) -> np.ndarray:
    font.clear()
    font.set_size(px, 72)
    font.set_text(ch, angle=angle)
    font.draw_glyphs_to_bitmap(antialiased=True)
    img = np.asarray(font.get_image(), dtype=np.float32) / 255.0
    ys, xs = np.nonzero(img > 0.05)
    if ys.size == 0:
        return np.zeros((0, 0), np.float32)
    return img[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _place(glyph: np.ndarray, canvas: int, dy: float, dx: float) -> np.ndarray:
    out = np.zeros((canvas, canvas), np.float32)
    h, w = glyph.shape
    if h == 0:
        return out
    top = int(round((canvas - h) / 2 + dy))
    left = int(round((canvas - w) / 2 + dx))
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, canvas), min(left + w, canvas)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = glyph[y0 - top:y1 - top, x0 - left:x1 - left]
    return out


def _glyph_fonts(fonts, paths, ch):
    """Indices of the fonts that hold ``ch``; Computer Modern faces only for ASCII letters and digits
    (their other code points hold other symbols)."""
    return [i for i, f in enumerate(fonts) if f.get_char_index(ord(ch)) != 0
            and not (os.path.basename(paths[i]).startswith("cm") and not (ch.isascii() and ch.isalnum()))]


def glyph_classes(min_fonts: int = 3, max_classes: int | None = None) -> list:
    """The classes of the glyph set: ``[(character, family, [font files]), ...]``, in a fixed order.

    A class is a character drawn in one family; it exists when at least ``min_fonts`` fonts of that family
    hold the character. Within a family, a character whose glyph looks like an earlier class's (Latin ``A``
    and Cyrillic ``А``) is dropped, so no two classes of a family share a shape; across families the same
    character stays, as distinct classes that differ in stroke detail only (the fine-grained part)."""
    import warnings

    from matplotlib import ft2font

    classes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for family, paths in font_files().items():
            fonts = [ft2font.FT2Font(p) for p in paths]
            if not fonts:
                continue
            ref = fonts[0]
            signatures = []
            for ch in _candidate_chars():
                owners = _glyph_fonts(fonts, paths, ch)
                if len(owners) < min_fonts or ref.get_char_index(ord(ch)) == 0:
                    continue
                sig = _place(_render(ref, ch, 40, 0.0), 64, 0, 0)
                if not sig.any() or any(np.abs(sig - t).sum() < 0.3 * max(sig.sum(), t.sum()) for t in signatures):
                    continue
                signatures.append(sig)
                classes.append((ch, family, [paths[i] for i in owners]))
    if max_classes:
        # the families in turn, so a small set keeps an even share of each (and stays fine-grained)
        by_family = [[c for c in classes if c[1] == f] for f in FAMILIES]
        turns = [g[i] for i in range(max(map(len, by_family))) for g in by_family if i < len(g)]
        classes = turns[:max_classes]
    return classes


def render_glyphs(size: int = 16, per_class: int = 16, seed: int = 0, max_classes: int | None = None):
    """Render the glyph set: ``(images (N, size, size) float32, labels (N,), class names)``.

    Each image: a random font of the class's family that holds the character, glyph height jittered in
    [0.55, 0.85] of the canvas, rotation in [-15, 15] degrees, shift up to 12% of the side; drawn at 2x and
    averaged down 2x2. Class names are ``"<character> <family>"``."""
    import warnings

    from matplotlib import ft2font

    classes = glyph_classes(max_classes=max_classes)
    cache = {}
    rng = np.random.default_rng(seed)
    canvas = 2 * size
    images = np.zeros((len(classes) * per_class, size, size), np.float32)
    labels = np.repeat(np.arange(len(classes)), per_class)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c, (ch, _, paths) in enumerate(classes):
            for m in range(per_class):
                path = paths[rng.integers(len(paths))]
                if path not in cache:
                    cache[path] = ft2font.FT2Font(path)
                font = cache[path]
                px = canvas * rng.uniform(0.55, 0.85)
                glyph = _render(font, ch, px, rng.uniform(-15, 15))
                if glyph.size and max(glyph.shape) > canvas:  # wide glyphs: shrink to fit
                    glyph = _render(font, ch, px * canvas / max(glyph.shape), 0.0)
                big = _place(glyph, canvas, *(rng.uniform(-0.12, 0.12, 2) * canvas))
                images[c * per_class + m] = big.reshape(size, 2, size, 2).mean((1, 3))
    return images, labels, [f"{ch} {family}" for ch, family, _ in classes]


def load_glyphs(size: int = 16, per_class: int = 16, n_classes: int | None = None, cache_dir: str | None = None,
                seed: int = 0) -> Dataset:
    """The fine-grained glyph set (``render_glyphs``); classes shuffled (``seed``) and split into two
    disjoint halves, train and test. ``n_classes`` keeps that many classes, an even share of each family
    (all by default). Cached under ``cache_dir``."""
    path = None
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        path = os.path.join(cache_dir, f"glyphs_s{size}_k{per_class}_c{n_classes}_seed{seed}.npz")
    if path and os.path.exists(path):
        z = np.load(path, allow_pickle=False)
        x, y, names = z["x"], z["y"], list(z["names"])
    else:
        x, y, names = render_glyphs(size, per_class, seed=seed, max_classes=n_classes)
        if path:
            np.savez_compressed(path, x=x, y=y, names=np.array(names))
    order = np.random.default_rng(seed).permutation(len(names))
    train_classes = order[: len(names) // 2]
    return _split(x, y, train_classes, "glyphs", names)


def load_dataset(name: str, cache_dir: str | None = None, **kw) -> Dataset:
    if name == "digits":
        return load_digits()
    if name == "glyphs":
        return load_glyphs(cache_dir=cache_dir, **kw)
    raise ValueError(f"unknown dataset {name!r}; expected 'digits' or 'glyphs'")


def occlude(x: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Zero a square patch of side ``round(fraction * side)`` at a random position in every image."""
    if fraction <= 0:
        return x
    n, _, h, w = x.shape
    s = max(1, int(round(fraction * min(h, w))))
    g = torch.Generator().manual_seed(seed)
    top = torch.randint(0, h - s + 1, (n,), generator=g)
    left = torch.randint(0, w - s + 1, (n,), generator=g)
    rows = torch.arange(h)[None, :, None]
    cols = torch.arange(w)[None, None, :]
    mask = ((rows >= top[:, None, None]) & (rows < top[:, None, None] + s) &
            (cols >= left[:, None, None]) & (cols < left[:, None, None] + s))
    return x.masked_fill(mask[:, None].to(x.device), 0.0)


class PKSampler:
    """Yields ``iterations`` batches of indices: ``P`` random classes x ``K`` instances, class-contiguous.

    With an even ``K`` rows ``2k`` and ``2k+1`` always share a label (adjacent-pair layout). Instances are
    drawn without replacement when a class has at least ``K`` of them.
    """

    def __init__(self, labels, P: int, K: int, iterations: int, seed: int = 0):
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if K < 2 or K % 2:
            raise ValueError(f"K must be an even integer >= 2 (adjacent pairs), got {K}")
        self.classes = np.unique(labels)
        if not 1 <= P <= len(self.classes):
            raise ValueError(f"P must be in 1..{len(self.classes)} (number of classes), got {P}")
        self.by_class = {c: np.flatnonzero(labels == c) for c in self.classes}
        self.P, self.K, self.iterations = P, K, iterations
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return self.iterations

    def __iter__(self):
        for _ in range(self.iterations):
            chosen = self.rng.choice(self.classes, self.P, replace=False)
            batch = []
            for c in chosen:
                pool = self.by_class[c]
                batch.extend(self.rng.choice(pool, self.K, replace=len(pool) < self.K).tolist())
            yield batch
