"""acllib: the models, losses and training strategies of "ACL: Aligned Contrastive Learning Improves
BERT and Multi-exit BERT Fine-tuning" (Li & Zhu), for an executable reproducibility study."""
from .config import PROFILES, RunConfig, get_profile, make_config
from .acl_grad import acl_grad_weight
from .losses import acl_cross_layer_loss, acl_embed_loss, gradient_angle, kd_loss, supcon_loss
from .models import LinearExit, MHAExit, MultiExitModel
from .runs import run, run_many

__all__ = ["PROFILES", "RunConfig", "get_profile", "make_config", "acl_cross_layer_loss",
           "acl_embed_loss", "acl_grad_weight", "gradient_angle", "kd_loss", "supcon_loss",
           "LinearExit", "MHAExit", "MultiExitModel", "run", "run_many"]
