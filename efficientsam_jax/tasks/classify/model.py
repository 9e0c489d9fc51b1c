"""The classifier of classification finetuning: the EfficientSAM/SAMI ViT encoder (no neck,
stochastic depth), the mean of its output tokens, a LayerNorm (`fc_norm`) and a linear
`head`: MAE's global-pool head (its encoder has no class token, as EfficientSAM's has none).

`image_encoder` has the same names and layout as in SAMI and EfficientSAM checkpoints, so a
pretrained encoder is copied in as one subtree and a finetuned one drops back into
EfficientSAM the same way.
"""
import flax.linen as nn
import jax.numpy as jnp

from efficientsam_jax.models import precision, vit

FC_NORM_EPS = 1e-6


class Classifier(nn.Module):
  """images (B, S, S, 3) normalised -> logits (B, num_classes) float32."""
  encoder: vit.ViTConfig  # neck_channels must be 0
  num_classes: int
  head_init_std: float = 2e-5  # MAE: 2e-5 finetuning, 0.01 linear probing
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  def setup(self):
    if self.encoder.neck_channels:
      raise ValueError("the classifier pools the encoder's tokens: neck_channels must be 0")
    self.image_encoder = vit.ImageEncoder(self.encoder, self.dtype, remat=self.remat)
    self.fc_norm = nn.LayerNorm(epsilon=FC_NORM_EPS)
    self.head = precision.Dense(self.num_classes, self.dtype,
                                kernel_init=nn.initializers.truncated_normal(self.head_init_std))

  def features(self, images, deterministic: bool = True):
    """(B, S, S, 3) -> (B, D): fc_norm of the mean output token."""
    tokens = self.image_encoder(images, deterministic)
    return self.fc_norm(tokens.mean(axis=(1, 2)))

  def __call__(self, images, deterministic: bool = True):
    return self.head(self.features(images, deterministic))
