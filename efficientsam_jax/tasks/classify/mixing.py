"""Label smoothing, mixup and CutMix of a batch (MAE's finetuning uses timm's Mixup with
mixup_alpha 0.8, cutmix_alpha 1.0, switch probability 0.5, label smoothing 0.1), as pure jax
functions of arrays and a key: the trainer derives the key from (seed, step).

timm's rules, which these follow: every batch either mixes (probability `prob`) or not; a
mixing batch uses CutMix with probability `switch_prob` when both are on, else mixup; the
mixing weight lam ~ Beta(alpha, alpha) of the chosen method; each example i is mixed with
example B-1-i (the batch flipped); CutMix pastes a box of area fraction about 1 - lam at a
uniformly drawn centre, clipped to the image, and lam becomes 1 - (clipped box area / image
area); targets are lam * smooth(y_i) + (1 - lam) * smooth(y_{B-1-i}), with
smooth(y) = one_hot(y) * (1 - smoothing) + smoothing / num_classes.
"""
import jax
import jax.numpy as jnp


def smooth_one_hot(labels, num_classes: int, smoothing: float):
  """(B,) int -> (B, C) float32 targets: 1 - smoothing + smoothing / C on the label."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def cutmix_box(key, height: int, width: int, lam):
  """A box whose area fraction is 1 - lam before clipping: centre uniform over the image,
  sides H*sqrt(1-lam) x W*sqrt(1-lam), clipped. Returns (top, bottom, left, right) int32."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = (height * ratio).astype(jnp.int32), (width * ratio).astype(jnp.int32)
  key_y, key_x = jax.random.split(key)
  cy = jax.random.randint(key_y, (), 0, height)
  cx = jax.random.randint(key_x, (), 0, width)
  top, bottom = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  left, right = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  return top, bottom, left, right


def mix_batch(key, images, labels, num_classes: int, *, mixup_alpha: float = 0.8,
              cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5,
              smoothing: float = 0.1):
  """images (B, H, W, C), labels (B,) int -> mixed images (B, H, W, C), targets (B, classes)
  float32 (module docstring). With both alphas 0 only label smoothing applies."""
  targets = smooth_one_hot(labels, num_classes, smoothing)
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, targets
  key_apply, key_switch, key_mix, key_cut, key_box = jax.random.split(key, 5)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(key_switch) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  lam_mixup = jax.random.beta(key_mix, max(mixup_alpha, 1e-3), max(mixup_alpha, 1e-3))
  lam_cutmix = jax.random.beta(key_cut, max(cutmix_alpha, 1e-3), max(cutmix_alpha, 1e-3))
  h, w = images.shape[1:3]
  top, bottom, left, right = cutmix_box(key_box, h, w, lam_cutmix)
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)  # (H, W)
  lam_box = 1.0 - inside.mean()
  mixes = jax.random.uniform(key_apply) < prob
  lam = jnp.where(mixes, jnp.where(use_cutmix, lam_box, lam_mixup), 1.0)
  flipped = images[::-1]
  mixup_images = lam * images + (1.0 - lam) * flipped
  cutmix_images = jnp.where(inside[None, :, :, None], flipped, images)
  mixed = jnp.where(mixes, jnp.where(use_cutmix, cutmix_images, mixup_images), images)
  return mixed, lam * targets + (1.0 - lam) * targets[::-1]
