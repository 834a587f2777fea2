"""A linear probe: multinomial logistic regression on frozen features, in pure PyTorch.

What a layer's vectors make linearly decodable (a word's sense, say) is measured by fitting
softmax regression on them and scoring held-out sentences. The recipe follows
scikit-learn's ``LogisticRegressionCV`` with the lbfgs solver, without depending on it:

* features are standardised with the training mean and (population) standard deviation;
* the objective is ``sum_i CE(z_i W + b, y_i) + ||W||^2 / (2C)`` over the standardised
  features z_i: C is the inverse regularisation strength as in scikit-learn, and the bias
  is not penalised;
* it is minimised full-batch with ``torch.optim.LBFGS`` (strong Wolfe line search) in
  float64, from zeros, with an analytic gradient and a curvature-based preconditioner
  (see ``_Problem.solve``), so a fit is deterministic and takes tens of iterations;
* C is chosen from a grid by stratified k-fold cross-validation on the training data only
  (mean fold accuracy, ties to the smaller C), then the probe is refitted on all of it.

Labels are arbitrary integer ids (CoarseWSD-20's sense ids, say); the probe predicts in
the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Probe", "fit_probe"]

DEFAULT_C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)

# L-BFGS phases: each stops when the preconditioned gradient's largest entry is below its
# tolerance (or the objective stops changing by 1e-12), and the next starts with a
# preconditioner recomputed at that point if the curvature weights w have moved by more
# than _RECOMPUTE_CHANGE (relative L1). Near the optimum the preconditioned gradient's
# squared norm is about twice the gap to the optimal (mean) objective, so 1e-7 leaves a
# gap of order 1e-12.
_PHASE_TOLERANCES = (1e-3, 1e-5, 1e-7)
_RECOMPUTE_CHANGE = 0.3
# The weighted Gram matrix of a preconditioner is summed over the rows that hold this share
# of the total weight: on nearly separable features most rows have almost none.
_GRAM_WEIGHT_SHARE = 0.999


@dataclass(frozen=True, eq=False)
class Probe:
    """A fitted softmax-regression probe over K classes of d-dimensional features.

    All tensors live on the CPU in float64 (``classes`` in int64). A probe trained on one
    class has ``weight`` and ``bias`` None and predicts that class everywhere.
    """

    classes: Tensor  # (K,) int64: the label ids, sorted; column k of predict_proba is classes[k]
    mean: Tensor = field(repr=False)  # (d,) training mean of each feature, subtracted before the linear map
    std: Tensor = field(repr=False)  # (d,) training standard deviation of each feature (1 where a feature is constant)
    weight: Tensor | None = field(repr=False)  # (d, K) weights on standardised features; None for a one-class probe
    bias: Tensor | None = field(repr=False)  # (K,) unpenalised biases; None for a one-class probe
    c: float | None  # the chosen inverse regularisation strength; None for a one-class probe
    cv_scores: dict[float, float] = field(default_factory=dict)  # C -> mean fold accuracy; {} if not cross-validated
    folds: int = 0  # cross-validation folds used to choose C; 0 when C was not cross-validated
    selection: str = "cv"  # how C was set: "cv", "fallback" (a class with one example: the middle C), "one-class"

    @property
    def num_features(self) -> int:
        """d, the number of features the probe expects."""
        return self.mean.shape[0]

    def logits(self, features: Tensor) -> Tensor:
        """Class scores: (n, d) features -> (n, K) float64 logits, on the CPU."""
        x = _check_features(features, "features")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"features has {x.shape[1]} columns but the probe was trained on {self.num_features}; pass "
                f"features of shape (n, {self.num_features})"
            )
        if self.weight is None or self.bias is None:
            return x.new_zeros(x.shape[0], 1)
        return ((x - self.mean) / self.std) @ self.weight + self.bias  # (n, K)

    def predict_proba(self, features: Tensor) -> Tensor:
        """Class probabilities: (n, d) features -> (n, K) float64, rows summing to 1.

        Column k is the probability of ``classes[k]``. Returned on the device of ``features``.
        """
        return torch.softmax(self.logits(features), dim=-1).to(features.device)

    def predict(self, features: Tensor) -> Tensor:
        """Most probable class: (n, d) features -> (n,) int64 label ids (the original ids).

        Returned on the device of ``features``.
        """
        return self.classes[self.logits(features).argmax(dim=-1)].to(features.device)


def fit_probe(
    features: Tensor,
    labels: Tensor,
    *,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    folds: int = 5,
    seed: int = 0,
    max_iter: int = 1000,
) -> Probe:
    """Fit a softmax-regression probe, choosing C by stratified cross-validation.

    Args:
        features: (n, d) real tensor, one row per training example; finite.
        labels: (n,) integer tensor of class ids (any integers, not necessarily 0..K-1).
        c_grid: inverse regularisation strengths to try (positive; scikit-learn's C).
        folds: cross-validation folds, at most; the folds used are
            ``max(2, min(folds, smallest class count))``. When a class has a single example
            C cannot be cross-validated and the middle of the sorted grid is used
            (``selection == "fallback"``).
        seed: seeds the shuffling of examples into folds (a ``torch.Generator``); the fits
            themselves are deterministic.
        max_iter: L-BFGS iterations per fit, at most.

    Returns:
        A :class:`Probe` refitted on all of ``features`` with the chosen C, with the mean
        cross-validated accuracy of every C in ``cv_scores``. With one class in ``labels``
        nothing is fitted and the probe predicts that class.
    """
    x = _check_features(features, "features")
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor of integer class ids; got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of class ids; got dtype {labels.dtype} (use .long())")
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, shape (n,); got shape {tuple(labels.shape)}")
    if labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"features and labels must have one row per example; got features {tuple(features.shape)} and "
            f"labels {tuple(labels.shape)}"
        )
    try:
        grid = sorted(float(c) for c in c_grid)
    except (TypeError, ValueError):
        grid = []
    if not grid or any(not (c > 0 and c < float("inf")) for c in grid):
        raise ValueError(f"c_grid must be a non-empty sequence of positive, finite numbers; got {c_grid!r}")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an int >= 2; got {folds!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int; got {seed!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int; got {max_iter!r}")

    classes, y = torch.unique(labels.detach().cpu().long(), sorted=True, return_inverse=True)  # (K,), (n,)
    K = classes.shape[0]
    mean, std = _moments(x)
    if K == 1:
        return Probe(classes, mean, std, None, None, None, {}, 0, "one-class")

    counts = torch.bincount(y, minlength=K)  # (K,)
    smallest = int(counts.min())
    if smallest < 2:
        c = grid[(len(grid) - 1) // 2]
        weight, bias = _Problem(x, y, K).solve(c, max_iter)
        return Probe(classes, mean, std, weight, bias, c, {}, 0, "fallback")

    k = max(2, min(folds, smallest))
    fold_of = _stratified_folds(y, k, seed)  # (n,)
    correct = torch.zeros(len(grid), dtype=torch.float64)
    for fold in range(k):
        train, test = fold_of != fold, fold_of == fold
        problem = _Problem(x[train], y[train], K)
        z_test = (x[test] - problem.mean) / problem.std  # (n_test, d)
        solution = None
        for i, c in enumerate(grid):  # ascending C: each fit starts from the more regularised one
            solution = problem.solve(c, max_iter, start=solution)
            predicted = (z_test @ solution[0] + solution[1]).argmax(dim=-1)  # (n_test,)
            correct[i] += (predicted == y[test]).double().mean()
    scores = {c: float(correct[i]) / k for i, c in enumerate(grid)}
    best = grid[0]
    for c in grid[1:]:
        if scores[c] > scores[best] + 1e-12:  # ties go to the smaller C, the stronger regularisation
            best = c
    weight, bias = _Problem(x, y, K).solve(best, max_iter)
    return Probe(classes, mean, std, weight, bias, best, scores, k, "cv")


def _check_features(features: Tensor, name: str) -> Tensor:
    """Validate (n, d) real, finite, non-empty features; return them as CPU float64."""
    if not isinstance(features, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (n, d); got {type(features).__name__}")
    if features.dim() != 2:
        raise ValueError(f"{name} must be 2-D, shape (n, d); got shape {tuple(features.shape)}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, shape (n, d) with n, d >= 1; got shape {tuple(features.shape)}")
    if features.dtype.is_complex or features.dtype == torch.bool:
        raise ValueError(f"{name} must be a real tensor; got dtype {features.dtype}")
    x = features.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise ValueError(f"{name} has NaN or infinite values in {bad} rows; drop or fill those rows first")
    return x


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """(n, d) -> mean (d,) and population std (d,), with 1 for constant features."""
    mean = x.mean(dim=0)
    std = x.std(dim=0, correction=0)
    std = torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))
    return mean, std


def _stratified_folds(y: Tensor, k: int, seed: int) -> Tensor:
    """Fold index in 0..k-1 of each example: (n,) class indices -> (n,) int64.

    Each class's examples are shuffled and dealt round-robin, continuing from where the
    previous class stopped, so every fold holds floor or ceil of count/k of each class and
    fold sizes differ by at most one.
    """
    generator = torch.Generator().manual_seed(seed)
    fold_of = torch.empty_like(y)
    position = 0
    for cls in range(int(y.max()) + 1):
        members = torch.nonzero(y == cls).flatten()
        members = members[torch.randperm(members.shape[0], generator=generator)]
        fold_of[members] = (position + torch.arange(members.shape[0])) % k
        position += members.shape[0]
    return fold_of


class _Problem:
    """One training set, standardised, to be solved for one or several C.

    With n >= d the design matrix u is the standardised features z; with n < d it is
    ``u = z V0`` in an orthonormal basis V0 (d, r) of z's row space, computed from the
    (n, n) Gram matrix: the optimum has no component outside that space, and a step then
    costs O(n^2) instead of O(n d). u is kept in both layouts, (n, r) and (r, n), so that
    both products of a step run as fast, row-major matrix products.
    """

    def __init__(self, x: Tensor, y: Tensor, K: int) -> None:
        """x: (n, d) float64 raw features; y: (n,) int64 class indices in 0..K-1."""
        n, d = x.shape
        self.mean, self.std = _moments(x)  # (d,), (d,)
        z = (x - self.mean) / self.std  # (n, d)
        self.basis: Tensor | None = None  # V0 (d, r), or None when u is z itself
        if n >= d:
            self.u = z  # (n, d)
        else:  # the row space through the smaller (n, n) Gram matrix: V0 = z^T U / s, u = z V0 = U s
            s2, U = torch.linalg.eigh(z @ z.t())  # (n,), (n, n)
            keep = s2 > 1e-10 * s2.max()
            s = s2[keep].sqrt()  # (r,)
            self.basis = z.t() @ U[:, keep] / s  # (d, r)
            self.u = U[:, keep] * s  # (n, r)
        self.u_t = self.u.t().contiguous()  # (r, n)
        self.gram = self.u_t @ self.u  # (r, r)
        self.onehot_t = torch.zeros(K, n, dtype=torch.float64)  # (K, n)
        self.onehot_t[y, torch.arange(n)] = 1.0
        self.n, self.K = n, K

    def solve(self, c: float, max_iter: int, start: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Minimise ``mean_i CE(z_i W + b, y_i) + ||W||^2 / (2 C n)`` (the objective over n).

        L-BFGS runs in preconditioned coordinates ``W = Q diag(scale) W'``, where Q
        diagonalises the curvature-weighted Gram matrix ``u^T diag(w) u`` and ``scale_j =
        1 / sqrt(s_j / n + 1 / (C n))`` with s_j its eigenvalues: a block-diagonal
        approximation of the Hessian, ``w_i`` being the mean over the classes of
        ``p_ik (1 - p_ik)``. It runs in phases, to ever smaller tolerances on the
        preconditioned gradient; between phases the preconditioner is recomputed at the
        current point when the weights w have changed by more than 30%. On nearly
        separable features, where the curvature at the optimum is far from that at the
        start, this cuts the iterations from hundreds or thousands to tens. The optimum is
        the same in any coordinates.

        Args:
            c: inverse regularisation strength.
            max_iter: L-BFGS iterations, at most, over all phases.
            start: (weight (d, K), bias (K,)) to start from, as returned; zeros when None.

        Returns:
            weight (d, K) on standardised features and bias (K,), centred to sum to zero.
        """
        K, r = self.K, self.u.shape[1]
        penalty = 1.0 / (c * self.n)
        if start is None:
            weight = torch.zeros(K, r, dtype=torch.float64)  # (K, r): W^T in u's coordinates
            bias = torch.zeros(K, dtype=torch.float64)  # (K,)
        else:
            weight = (start[0] if self.basis is None else self.basis.t() @ start[0]).t()
            bias = start[1].clone()
        iterations_left = max_iter
        curvature, run = None, None
        for tolerance in _PHASE_TOLERANCES:
            new_curvature = self._curvature(weight, bias)  # (n,)
            moved = curvature is None or (new_curvature - curvature).abs().sum() > _RECOMPUTE_CHANGE * curvature.sum()
            if run is None or moved:
                curvature = new_curvature
                run = _PreconditionedRun(self, penalty, weight, bias, curvature)
            iterations_left -= run.step(tolerance, iterations_left)
            weight, bias = run.point()
            if iterations_left <= 0:
                break
        weight = weight.t()  # (r, K)
        if self.basis is not None:
            weight = self.basis @ weight  # (d, K)
        return weight.contiguous(), bias - bias.mean()  # biases are defined up to a shared shift; centre them

    def _curvature(self, weight: Tensor, bias: Tensor) -> Tensor:
        """(n,) mean over the classes of p_ik (1 - p_ik), at weight (K, r) and bias (K,)."""
        p = torch.softmax(weight @ self.u_t + bias[:, None], dim=0)  # (K, n)
        return (p * (1 - p)).mean(dim=0)


class _PreconditionedRun:
    """L-BFGS on theta = (W' (K, r), b' (K,)) with W = W' diag(scale) Q^T and b = bias_scale b'.

    Q (r, r) and the eigenvalues s_j diagonalise ``u^T diag(w) u``; ``scale_j = 1 / sqrt(s_j
    / n + penalty)`` and ``bias_scale = 1 / sqrt(mean w)``, so that the Hessian in theta is
    close to the identity near the point where the curvature w was taken.
    """

    def __init__(self, problem: _Problem, penalty: float, weight: Tensor, bias: Tensor, curvature: Tensor) -> None:
        """weight (K, r), bias (K,): the starting point; curvature (n,): w at that point."""
        u, u_t, onehot_t, n, K = problem.u, problem.u_t, problem.onehot_t, problem.n, problem.K
        r = u.shape[1]
        if bool((curvature == curvature[0]).all()):  # at zero, say: no need to weight the Gram matrix
            gram = float(curvature[0]) * problem.gram  # (r, r)
        else:  # rows by falling weight, the smallest that together hold under 0.1% of it left out
            order = torch.sort(curvature, descending=True, stable=True).indices  # (n,)
            total = curvature[order].cumsum(0)  # (n,)
            rows = order[: int((total < _GRAM_WEIGHT_SHARE * total[-1]).sum()) + 1]  # (m,)
            gram = u_t[:, rows] @ (u[rows] * curvature[rows, None])  # (r, r)
        s, Q = torch.linalg.eigh(gram)  # (r,), (r, r)
        scale = (s.clamp_min(0) / n + penalty).rsqrt()  # (r,)
        bias_scale = float(curvature.mean().clamp_min(1e-10).rsqrt())
        self.Q, self.scale, self.bias_scale, self.K, self.r = Q, scale, bias_scale, K, r
        self.theta = torch.cat([(weight @ Q / scale).reshape(-1), bias / bias_scale])  # ((r + 1) K,)
        theta = self.theta

        def closure() -> Tensor:
            rotated, b = scale * theta[: K * r].view(K, r), bias_scale * theta[K * r:]  # (K, r), (K,)
            log_p = torch.log_softmax((rotated @ Q.t()) @ u_t + b[:, None], dim=0)  # (K, n)
            loss = -(log_p * onehot_t).sum() / n + 0.5 * penalty * (rotated * rotated).sum()
            residual = (log_p.exp() - onehot_t) / n  # (K, n): d loss / d logits
            grad_rotated = (residual @ u) @ Q + penalty * rotated  # (K, r)
            theta.grad = torch.cat([(scale * grad_rotated).reshape(-1), bias_scale * residual.sum(dim=1)])
            return loss

        self.closure = closure
        self.optimizer = torch.optim.LBFGS(
            [theta], lr=1.0, tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe",
        )

    def step(self, tolerance: float, max_iter: int) -> int:
        """Run until the preconditioned gradient's largest entry is below tolerance; iterations used."""
        group = self.optimizer.param_groups[0]
        group.update(tolerance_grad=tolerance, max_iter=max_iter, max_eval=2 * max_iter)
        before = self.optimizer.state[self.theta].get("n_iter", 0)
        with torch.no_grad():
            self.optimizer.step(self.closure)
        return self.optimizer.state[self.theta]["n_iter"] - before

    def point(self) -> tuple[Tensor, Tensor]:
        """The current weight (K, r) and bias (K,) in u's coordinates."""
        K, r = self.K, self.r
        return (self.scale * self.theta[: K * r].view(K, r)) @ self.Q.t(), self.bias_scale * self.theta[K * r:]
