"""The saturating law's robust solver: y = E + a * x^(-b) by a Huber loss on log residuals.

scipy's robust least squares answers every full-data fit; the bootstrap replicates are solved together by a
vectorised Gauss-Newton on the same loss (`analysis.fit` calls `_saturating_minima` and `_saturating_boot`).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
from scipy import optimize

MIN_POINTS = {"power": (3, 2), "saturating": (5, 4)}  # (trials, distinct x values)


# --- saturating power law: Huber on log residuals, robust least squares ----------------------------
# The objective is the Chinchilla one: the sum of Huber_delta(log prediction - log y), E and a as
# exp(e) and exp(alpha).  scipy.optimize.least_squares(loss="huber", f_scale=delta) minimises exactly that
# sum (its cost, 0.5 * delta^2 * rho(r^2 / delta^2), is the Huber loss of each residual), and gives every
# full-data fit its answer, polishing the best few of a grid of starts.  One scipy call per bootstrap
# replicate would cost seconds per fit (a few ms each, 1000 replicates, several fits per axis), so the
# replicates are solved together by `_gauss_newton`: Gauss-Newton steps on the same loss as scipy's (the
# curvature of the points inside delta, the only ones the Huber loss curves at, Levenberg-Marquardt
# damping, the same bounds), vectorised over rows; a row that stalls is finished by scipy.
# tests/test_analysis.py holds the two to the same minima.
POLISHED_STARTS = 5
_LM_ITERATIONS = 200


def _model_parts(thetas: np.ndarray, lx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log prediction and its derivative in e (the share of E in the prediction) for (B, 3) thetas at (B, n) or (n,)."""
    e, u = thetas[:, :1], thetas[:, 1:2] - thetas[:, 2:3] * lx
    d = e - u
    t = np.exp(-np.abs(d))
    share = np.where(d >= 0, 1.0, t)
    share /= 1.0 + t
    np.maximum(e, u, out=u)
    u += np.log1p(t)
    return u, share


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    """The Huber loss of each residual: 0.5 r^2 within delta, delta (|r| - delta/2) beyond."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _huber_cost(r: np.ndarray, delta: float) -> np.ndarray:
    """The Huber cost of rows of residuals (summed over the last axis)."""
    return _huber(r, delta).sum(axis=-1)


def _residuals(theta: np.ndarray, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    return _model_parts(theta[None, :], lx)[0][0] - ly


def _jacobian(theta: np.ndarray, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    share = _model_parts(theta[None, :], lx)[1][0]
    return np.stack([share, 1.0 - share, -lx * (1.0 - share)], axis=1)


def _least_squares(start: np.ndarray, lx: np.ndarray, ly: np.ndarray, delta: float, bounds: np.ndarray,
                   max_nfev: int = 2000) -> tuple[np.ndarray, float]:
    """scipy's robust least squares (trust region reflective, Huber loss) from `start`; (theta, Huber cost)."""
    lo, hi = bounds[:, 0], bounds[:, 1]
    res = optimize.least_squares(_residuals, np.clip(start, lo, hi), jac=_jacobian, args=(lx, ly), bounds=(lo, hi),
                                 loss="huber", f_scale=delta, method="trf", x_scale="jac",
                                 ftol=1e-12, xtol=1e-12, gtol=1e-12, max_nfev=max_nfev)
    return res.x, float(_huber_cost(_residuals(res.x, lx, ly), delta))


_BLOCK_ROWS = 64  # rows per block: the (block, n) temporaries stay in cache instead of megabytes per operation


def _blocks(count: int) -> list[slice]:
    return [slice(i, min(i + _BLOCK_ROWS, count)) for i in range(0, count, _BLOCK_ROWS)]


def _row(x: np.ndarray, block: slice) -> np.ndarray:
    return x[block] if x.ndim == 2 else x


def _evaluate(thetas: np.ndarray, lx: np.ndarray, ly: np.ndarray,
              delta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log prediction, share of E, Huber cost) of rows of thetas, block by block."""
    pred, share, cost = np.empty(ly.shape), np.empty(ly.shape), np.empty(len(thetas))
    for block in _blocks(len(thetas)):
        pred[block], share[block] = _model_parts(thetas[block], _row(lx, block))
        cost[block] = _huber_cost(pred[block] - ly[block], delta)
    return pred, share, cost


def _linearise(pred: np.ndarray, share: np.ndarray, lx: np.ndarray, ly: np.ndarray,
               delta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gradient, Huber Gauss-Newton curvature, IRLS curvature's diagonal) of the Huber cost, block by block:
    the curvature of the points inside delta (the only ones the Huber loss curves at); the reweighted
    (delta / |r|) one, never zero wherever the data move a parameter, scales the damping."""
    grad, hess, scale = np.empty((len(pred), 3)), np.empty((len(pred), 3, 3)), np.empty((len(pred), 3))
    for block in _blocks(len(pred)):
        x, r, s = _row(lx, block), pred[block] - ly[block], share[block]
        absr = np.abs(r)
        inside = absr <= delta
        psi = np.clip(r, -delta, delta)   # the Huber loss's derivative
        rest = 1.0 - s                    # d pred / d alpha; d pred / d b = -lx * rest
        psi_rest = psi * rest
        grad[block] = np.stack([(psi * s).sum(1), psi_rest.sum(1), -(psi_rest * x).sum(1)], axis=1)
        hess[block] = _normal_matrix(inside.astype(float), s, rest, x)
        w = np.where(inside, 1.0, delta / np.maximum(absr, 1e-300))
        wr = w * rest * rest
        scale[block] = np.stack([(w * s * s).sum(1), wr.sum(1), (wr * x * x).sum(1)], axis=1)
    return grad, hess, scale


def _gauss_newton(thetas: np.ndarray, lx: np.ndarray, ly: np.ndarray, delta: float, lo: np.ndarray, hi: np.ndarray,
                  iterations: int = _LM_ITERATIONS, ftol: float = 1e-12,
                  xtol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Damped Gauss-Newton on the Huber cost for (B, 3) thetas on rows of data, all rows at once.

    `lx` (B, n) or (n,), `ly` (B, n), bounds `lo`/`hi` (B, 3).  Rows never go uphill; a parameter at a
    bound that the gradient pushes outwards is held for that step.  A row has converged when a nearly
    undamped step changes its cost or its parameters no more than `ftol`/`xtol`; one that stalls (steps
    rejected up to a huge damping) or runs out of iterations is returned as not converged.  Finished rows
    leave the working arrays, and an accepted step's model values are those of the next iteration.
    Returns (thetas, costs, converged).
    """
    thetas = np.clip(np.array(thetas, float), lo, hi)
    converged = np.zeros(len(thetas), bool)
    rows = np.arange(len(thetas))  # the working rows, by their index in `thetas`
    theta, x, y, low, high = thetas.copy(), lx, ly, lo, hi
    pred, share, work_cost = _evaluate(theta, x, y, delta)
    cost = work_cost.copy()
    lam = np.full(len(thetas), 1e-3)
    for _ in range(iterations):
        if not len(rows):
            break
        grad, hess, scale = _linearise(pred, share, x, y, delta)
        held = ((theta <= low) & (grad > 0)) | ((theta >= high) & (grad < 0))
        grad = np.where(held, 0.0, grad)
        stationary = ~grad.any(axis=1)
        hess = np.where(held[:, :, None] | held[:, None, :], 0.0, hess)
        damp = np.where(held, 1.0, lam[:, None] * scale + 1e-12)
        step = _solve(hess + damp[:, :, None] * np.eye(3), -grad)
        candidate = np.clip(theta + step, low, high)
        new_pred, new_share, new = _evaluate(candidate, x, y, delta)
        better = new < work_cost
        small = ((work_cost - new <= ftol * work_cost)
                 | (np.abs(candidate - theta).max(1) <= xtol * (1.0 + np.abs(theta).max(1))))
        finished = stationary | (better & small & (lam <= 1e-2))
        stalled = ~better & (lam >= 1e8)
        theta[better], work_cost[better] = candidate[better], new[better]
        pred[better], share[better] = new_pred[better], new_share[better]
        lam = np.clip(np.where(better, lam / 5, lam * 5), 1e-12, 1e10)
        thetas[rows], cost[rows] = theta, work_cost
        converged[rows[finished]] = True
        keep = ~(finished | stalled)
        if not keep.all():
            rows, theta, work_cost, lam, pred, share, y, low, high = (
                v[keep] for v in (rows, theta, work_cost, lam, pred, share, y, low, high))
            x = x[keep] if x.ndim == 2 else x
    return thetas, cost, converged


def _normal_matrix(w: np.ndarray, share: np.ndarray, rest: np.ndarray, lx: np.ndarray) -> np.ndarray:
    """(B, 3, 3) sum of w J^T J over the points, J = (share, rest, -lx rest), without a (B, n, 3, 3) temporary."""
    ws, wr = w * share, w * rest * rest
    sr, wrl = ws * rest, wr * lx
    out = np.empty((len(w), 3, 3))
    out[:, 0, 0] = (ws * share).sum(1)
    out[:, 0, 1] = out[:, 1, 0] = sr.sum(1)
    out[:, 0, 2] = out[:, 2, 0] = -(sr * lx).sum(1)
    out[:, 1, 1] = wr.sum(1)
    out[:, 1, 2] = out[:, 2, 1] = -wrl.sum(1)
    out[:, 2, 2] = (wrl * lx).sum(1)
    return out


def _solve(matrices: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(matrices, rhs[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:  # an exactly singular row: the least-norm step for every row
        return np.einsum("bkl,bl->bk", np.linalg.pinv(matrices), rhs)


def _start_grid(ly: np.ndarray) -> np.ndarray:
    """Starting points spanning E below the best value, a around the typical value, b in (0, 2]."""
    y = np.exp(ly)
    lo, mid = y.min(), np.median(y)
    es = np.log(lo * np.array([0.02, 0.25, 0.5, 0.75, 0.95]))
    alphas = np.log(mid * np.array([0.05, 0.3, 1.0, 3.0]))
    bs = np.array([0.05, 0.2, 0.5, 1.0, 2.0])
    return np.array(np.meshgrid(es, alphas, bs, indexing="ij")).reshape(3, -1).T


def _bounds(ly: np.ndarray) -> np.ndarray:
    """(..., 3, 2) bounds: E from 1e-4 of the best value (indistinguishable from 0; lower, a pure
    power law sends the optimiser down a flat valley for ever) to the worst value; b in [0, 10]."""
    lo, hi = ly.min(axis=-1), ly.max(axis=-1)
    return np.stack([np.stack([lo - math.log(1e4), hi], -1), np.stack([lo - 30.0, hi + 30.0], -1),
                     np.stack([np.zeros_like(lo), np.full_like(lo, 10.0)], -1)], -2)


def _one_blas_thread() -> Any:
    """The solvers call BLAS on 3-column matrices; OpenBLAS worker threads spinning on a shared, busy
    machine made the bootstrap 10-40x slower, so fits run with one BLAS thread."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _distinct(points: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    """The rows of `points` that differ (max abs) by more than `tol` from every earlier row."""
    kept: list[np.ndarray] = []
    for p in points:
        if np.isfinite(p).all() and all(np.abs(p - k).max() > tol for k in kept):
            kept.append(p)
    return np.array(kept).reshape(-1, points.shape[1])


def _saturating_minima(lx: np.ndarray, ly: np.ndarray, starts: np.ndarray, delta: float,
                       polish: int = POLISHED_STARTS) -> tuple[np.ndarray, np.ndarray]:
    """(minima, basins): the distinct minima scipy reaches from the `polish` starts that the batched descent
    brought lowest, best first; and the distinct points where the descent from every start ended."""
    bounds = _bounds(ly)
    lo, hi = (np.broadcast_to(bounds[:, i], (len(starts), 3)) for i in (0, 1))
    walked, cost, _ = _gauss_newton(starts, lx, np.broadcast_to(ly, (len(starts), len(ly))), delta, lo, hi)
    order = np.argsort(cost)
    found = sorted((_least_squares(walked[i], lx, ly, delta, bounds) for i in order[:polish]),
                   key=lambda pair: pair[1])
    return _distinct(np.array([theta for theta, _ in found])), _distinct(walked[order])


def _saturating_boot(minima: np.ndarray, basins: np.ndarray, grid: np.ndarray, lx: np.ndarray, ly: np.ndarray,
                     idx: np.ndarray, delta: float) -> np.ndarray:
    """Bootstrap thetas: every replicate descends from the full-data optimum and from the start that costs it
    least among the other full-data minima, the basins (where the descent from each grid point ended on all
    the data) and the grid itself, all replicates together, and keeps the lower; scipy finishes a row that
    stalled.  Each replicate's cost at every start is one product, (times each trial was drawn) @ (Huber
    loss of each trial at each start), not a model evaluation per start and replicate."""
    ok = np.array([len(np.unique(rows)) >= MIN_POINTS["saturating"][1] for rows in idx], bool)
    out = np.full((len(idx), 3), np.nan)
    if not ok.any():
        return out
    rows = idx[ok]
    bx, by = lx[rows], ly[rows]
    bounds = _bounds(by)
    lo, hi = bounds[..., 0], bounds[..., 1]
    best, best_cost, best_done = _gauss_newton(np.tile(minima[0], (len(rows), 1)), bx, by, delta, lo, hi)
    others = _distinct(np.vstack([minima, basins, grid]))[1:]
    if len(others):
        counts = np.bincount((np.arange(len(rows))[:, None] * len(lx) + rows).ravel(),
                             minlength=len(rows) * len(lx)).reshape(len(rows), len(lx)).astype(float)
        start_cost = counts @ _huber(_model_parts(others, lx)[0] - ly, delta).T
        walked, cost, done = _gauss_newton(others[np.argmin(start_cost, axis=1)], bx, by, delta, lo, hi)
        lower = cost < best_cost
        best[lower], best_cost[lower], best_done[lower] = walked[lower], cost[lower], done[lower]
    for i in np.flatnonzero(~best_done):
        best[i] = _least_squares(best[i], bx[i], by[i], delta, bounds[i], max_nfev=50)[0]
    out[ok] = best
    return out
