"""Step functions: ``(model, batch) -> {"loss": ..., "loss/<part>": ...}``.

The trainer backpropagates ``loss`` and logs every key as an MLflow metric. Batches come from
:class:`da_pose.data.dataset.PoseDataset` (dicts with ``image``, ``target``, ``target_weight``).
"""

from __future__ import annotations

import torch

from da_pose.train.losses import joints_mse


def supervised_step(model, batch: dict) -> dict[str, torch.Tensor]:
    """Heatmap regression on labelled images (pretraining, oracle, fine-tuning).

    Shape:
        batch["image"]: (B, 3, S, S); batch["target"]: (B, K, h, w); batch["target_weight"]: (B, K)
    """
    out = model(batch["image"])
    loss = joints_mse(out.heatmaps, batch["target"], batch["target_weight"])
    return {"loss": loss}


def ccssl_step(model, batch: dict, gamma: float = 10.0) -> dict[str, torch.Tensor]:
    """CC-SSL training step (Mu et al. CVPR 2020, Sec. 3.4): L = L_src + gamma * L_tgt.

    ``batch["source"]`` is a labelled synthetic batch, ``batch["target"]`` a real batch whose
    targets are the kept pseudo-labels (rejected joints have weight 0). Both go through the model
    in one forward pass (one BatchNorm statistic over the mixed batch, as the published code's
    concatenated batch does).
    """
    src, tgt = batch["source"], batch["target"]
    n = src["image"].size(0)
    out = model(torch.cat([src["image"], tgt["image"]]))
    hm_src = [h[:n] for h in out.heatmaps]
    hm_tgt = [h[n:] for h in out.heatmaps]
    loss_src = joints_mse(hm_src, src["target"], src["target_weight"])
    loss_tgt = joints_mse(hm_tgt, tgt["target"], tgt["target_weight"])
    return {"loss": loss_src + gamma * loss_tgt, "loss/src": loss_src.detach(), "loss/tgt": loss_tgt.detach(),
            "target/kept_joints": tgt["target_weight"].mean().detach()}


def wscda_step(model, batch: dict, adversary, cfg) -> dict[str, torch.Tensor]:
    """WS-CDA training step (Cao et al. ICCV 2019, Eq. 1-3; :mod:`da_pose.adapt.wscda`).

    ``batch`` holds three labelled-by-domain batches: ``other`` (the other body plan; only its
    mapped joints have weight), ``animal`` (source, plus any labelled target images) and
    ``target`` (unlabelled target: never in the pose loss). Each item carries ``domain`` = [y, z].
    All images go through the model in one forward pass (one BatchNorm statistic, as in
    :func:`ccssl_step`); the discriminator reads ``PoseOutput.features``.

    ``cfg.mode == "grl"``: ``loss = beta * L_pose + L_DDL`` through a gradient reversal layer of
    coefficient ``adversary.lam()`` (the extractor sees ``-lam * dL_DDL``: alpha = -1 after the
    warm-up). ``"minmax"``: the discriminator first takes its own step on detached features, then
    ``loss = beta * L_pose + alpha * L_DDL`` with the discriminator fixed.

    Shape:
        batch[part]["image"]: (B_part, 3, S, S); ["target"]: (B_part, K, h, w);
        ["target_weight"]: (B_part, K); ["domain"]: (B_part, 2)
    """
    from da_pose.adapt.wscda import ddl_loss, domain_accuracy, pose_loss

    parts = [batch["other"], batch["animal"], batch["target"]]
    sizes = [p["image"].size(0) for p in parts]
    n_lab = sizes[0] + sizes[1]  # labelled samples first: other, then animals
    out = model(torch.cat([p["image"] for p in parts]))
    heatmaps = [h[:n_lab] for h in out.heatmaps]  # B_lab, K, h, w per stack
    target = torch.cat([parts[0]["target"], parts[1]["target"]])
    weight = torch.cat([parts[0]["target_weight"], parts[1]["target_weight"]])
    domain = torch.cat([p["domain"] for p in parts]).float()  # B, 2
    y, z = domain[:, 0], domain[:, 1]
    per_sample = joints_mse(heatmaps, target, weight, reduction="none")  # B_lab
    pose = pose_loss(per_sample, y[:n_lab], cfg.w2)
    features = out.features  # B, C, h', w'
    logged: dict[str, torch.Tensor] = {}
    if cfg.mode == "grl":
        lam = adversary.lam()
        logits = adversary.reversed_logits(features)
        ddl = ddl_loss(logits, y, z, cfg.w1, cfg.balance_y)
        loss = cfg.beta * pose["pose"] + ddl["ddl"]
        logged["grl/lambda"] = torch.tensor(lam)
    else:
        logits, ddl = adversary.update(features, y, z, cfg.w1, cfg.balance_y)
        adversarial = ddl_loss(adversary.fixed_logits(features), y, z, cfg.w1, cfg.balance_y)
        loss = cfg.beta * pose["pose"] + cfg.alpha * adversarial["ddl"]
        logged["loss/ddl_extractor"] = adversarial["ddl"].detach()
    adversary.advance()
    acc = domain_accuracy(logits, y, z)
    logged.update({
        "loss": loss,
        "loss/pose": pose["pose"].detach(),
        "loss/pose_animal": pose["pose_animal"].detach(),
        "loss/pose_other": pose["pose_other"].detach(),
        "loss/ddl": ddl["ddl"].detach(),
        "loss/ddl_y": ddl["ddl_y"].detach(),
        "loss/ddl_z": ddl["ddl_z"].detach(),
        "disc/acc_y": acc["acc_y"],
        "disc/acc_z": acc["acc_z"],
    })
    return logged
