r"""Small exact solvers on a K x K Gram matrix Q (Q_jk = <g_j, g_k>), in float64 numpy.

Each returns coefficients on the rows g_k; none needs the vectors themselves. The QPs are tiny
(K is the number of tasks), so they are solved exactly by scipy's active-set NNLS after writing
Q = R^T R (``psd_factor``); nothing here iterates to a tolerance except the Nash solver (Newton)
and CAGrad's inner problem (SLSQP, as in the authors' code).
"""

from __future__ import annotations

import numpy as np


def scaled(gram: np.ndarray) -> np.ndarray:
    """Q / mean(diag Q): every solver's answer is invariant to one global scale, and O(1)."""
    mean = float(np.mean(np.diag(gram)))
    return gram / mean if mean > 0 else gram


def psd_factor(gram: np.ndarray) -> np.ndarray:
    """R [K, K] with R^T R = Q (negative eigenvalues from rounding are clipped to zero)."""
    vals, vecs = np.linalg.eigh((gram + gram.T) / 2)
    return np.sqrt(np.clip(vals, 0.0, None))[:, None] * vecs.T


def min_norm_simplex(gram: np.ndarray) -> np.ndarray:
    r"""argmin_{alpha >= 0, sum alpha = 1} alpha^T Q alpha: the min-norm point of the hull (MGDA).

    Exact, via NNLS: min_{u >= 0} ||R u||^2 + (1^T u - 1)^2. Writing u = t alpha with alpha on
    the simplex, the inner minimum over t is q / (1 + q) with q = alpha^T Q alpha, increasing in
    q, so alpha = u / 1^T u is the min-norm point.
    """
    k = gram.shape[0]
    a = np.vstack([psd_factor(scaled(gram)), np.ones((1, k))])  # [K+1, K]
    b = np.zeros(k + 1)
    b[-1] = 1.0
    from scipy.optimize import nnls  # lazy: scipy is needed only by these strategies

    u, _ = nnls(a, b)
    return u / u.sum()


def dual_cone_weights(gram: np.ndarray, u: np.ndarray) -> np.ndarray:
    r"""argmin_{v >= u} v^T Q v: the projection of J^T u onto the dual cone {x: J x >= 0}.

    Proposition 1 of Quinton & Rey (2024): the projection is J^T v. With v = u + z, z >= 0, this
    is the NNLS problem min_z ||R z + R u||^2.
    """
    r = psd_factor(gram)
    from scipy.optimize import nnls

    z, _ = nnls(r, -r @ u)
    return u + z


def nash_bargaining(gram: np.ndarray, ridge: float = 1e-8, iters: int = 100) -> np.ndarray:
    r"""alpha > 0 with Q alpha = 1 / alpha (Navon et al. 2022), by damped Newton.

    The condition is the stationarity of the strictly convex F(alpha) = 1/2 alpha^T Q alpha -
    sum_k log alpha_k (gradient Q alpha - 1/alpha, Hessian Q + diag(1/alpha^2)), so Newton with
    backtracking (which keeps alpha > 0 and F decreasing) converges to the unique solution,
    quadratically near it; start from the orthogonal-case solution 1/sqrt(diag Q). A ridge
    ``ridge * diag(Q)`` keeps F bounded below when the gradients are positively dependent; being
    diagonal in Q's own scale it keeps the solution's invariance to rescaling one task.
    """
    q = scaled(gram)
    q = q + ridge * np.diag(np.diag(q))
    alpha = 1.0 / np.sqrt(np.diag(q))

    def potential(x: np.ndarray) -> float:
        return 0.5 * x @ q @ x - np.log(x).sum()

    for _ in range(iters):
        grad = q @ alpha - 1.0 / alpha  # (Q alpha)_k alpha_k = 1 at the solution
        if np.max(np.abs(grad * alpha)) < 1e-10:
            break
        step = np.linalg.solve(q + np.diag(1.0 / alpha**2), -grad)
        t, f0 = 1.0, potential(alpha)
        while t > 1e-10:
            trial = alpha + t * step
            if np.all(trial > 0) and potential(trial) <= f0 + 1e-4 * t * (grad @ step):
                break
            t /= 2
        else:  # no decrease left at rounding level: converged as far as float64 allows
            break
        alpha = trial
    return alpha


def cagrad_direction(gram: np.ndarray, c: float) -> np.ndarray:
    r"""CAGrad (Liu et al. 2021) coefficients a with d = sum_k a_k g_k.

    g0 = mean_k g_k; w = argmin_{w in simplex} <g_w, g0> + c ||g0|| ||g_w|| with g_w = sum w_k g_k
    (solved by SLSQP from the uniform start, as in the authors' code); d = g0 + c ||g0|| g_w /
    ||g_w||, i.e. a = 1/K + lambda w with lambda = c ||g0|| / ||g_w||.
    """
    q = scaled(gram)
    k = q.shape[0]
    b = np.full(k, 1.0 / k)
    g0_norm = float(np.sqrt(max(b @ q @ b, 0.0)))
    coef = c * g0_norm

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        gw = float(np.sqrt(max(w @ q @ w, 0.0) + 1e-12))
        return float(w @ q @ b + coef * gw), q @ b + coef * (q @ w) / gw

    from scipy.optimize import minimize

    result = minimize(
        objective, b, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(k)}],
        options={"ftol": 1e-14, "maxiter": 500},
    )  # fmt: skip
    w = np.clip(result.x, 0.0, None)
    w = w / w.sum()
    gw_norm = float(np.sqrt(max(w @ q @ w, 0.0)))
    return b + (coef / gw_norm) * w if gw_norm > 1e-12 else b


def pcgrad_coefficients(gram: np.ndarray, orders: list[list[int]]) -> tuple[np.ndarray, int]:
    r"""PCGrad (Yu et al. 2020) as coefficients c on the original g_k, and the projection count.

    Row i of C holds g_i' = sum_j C_ij g_j. For each task i, for j in ``orders[i]`` (j != i):
    if <g_i', g_j> < 0, g_i' -= <g_i', g_j> / ||g_j||^2 g_j, i.e. C_ij -= (C_i Q_:j) / Q_jj.
    The update is sum_i g_i' = sum_j (sum_i C_ij) g_j.
    """
    k = gram.shape[0]
    coef = np.eye(k)
    projections = 0
    for i in range(k):
        for j in orders[i]:
            if j == i or gram[j, j] <= 0:
                continue
            dot = coef[i] @ gram[:, j]  # <g_i', g_j>
            if dot < 0:
                coef[i, j] -= dot / gram[j, j]
                projections += 1
    return coef.sum(0), projections
