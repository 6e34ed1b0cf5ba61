"""The numba trading kernel: one call steps N independent envs over one shared price series.

Timing (the honesty rule): at step k env i has seen bars up to and including ``t[i]`` (its
observation window ends at the close of ``t[i]``). Everything decided there uses bar t and
earlier only: the agent's target x the size multiplier of bar t (``@size`` for longs,
``@short_size`` for shorts), capped at ``max_leverage``, is the *sized target*. When it differs
from the sized target last requested by more than ``rebalance_threshold`` (checked every bar, so
sized positions follow their size), an order is filled at the *next* bar's open, ``open[t+1]``,
moved against the trade by the slippage (fixed bps plus a square-root impact of the order's share
of bar t's volume), capped at ``max_participation`` of bar t's volume (the last closed bar), and
charged ``transaction_fee`` on the traded notional. The order is sized so that the position after
it is the sized target's fraction of the equity left *after* its fee and slippage: a 1x long
spends exactly its cash and never borrows. Stops are then checked against bar t+1's range (a gap
through a stop fills at the open, not the stop), borrow and funding are charged, and equity is
marked at ``close[t+1]``. A drawdown beyond the breaker's limit flattens the position at the next
open and pauses trading. After a stop exit the account re-enters at the next open if the target
still asks for a position (``reenter`` = next_bar), or only once the agent's target has left the
stopped side (``reenter`` = signal: flat or the other side first). ``close_positions`` ends a
backtest: it sells (or covers) what is still held at the last close, charged like any exit.

Units: prices in quote currency; ``cash`` and ``equity`` in quote currency (start: 1.0 per env, the
backtest scales); ``units`` in base currency (negative = short); targets are fractions of equity.

Rewards (``reward_kind``): 0 log return of equity; 1 differential Sharpe ratio (Moody & Saffell
1998) with EMA rate ``reward_param``; 2 log return minus ``reward_param`` x the increase of the
drawdown from the episode's equity peak.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

MIN_EQUITY = 1e-12  # equity is clamped here inside the log reward when an env is wiped out
LOG_RETURN, DIFFERENTIAL_SHARPE, DRAWDOWN_PENALTY = 0, 1, 2

# columns of ``bars`` (T, 10): prices, volume, size multipliers (long, short), stop unit, fee and
# slippage scales
OPEN, HIGH, LOW, CLOSE, VOLUME, SIZE, SHORT_SIZE, STOP_UNIT, FEE_SCALE, SLIPPAGE_SCALE = range(10)
# entries of ``rules`` (float64 vector, see src/envs/market.py: MarketRules.vector)
(
    FEE,
    SLIPPAGE,
    IMPACT,
    MAX_PARTICIPATION,
    CARRY,
    EPISODE_LENGTH,
    EQUITY_FLOOR,
    REBALANCE,
    REWARD_KIND,
    REWARD_PARAM,
    MAX_LEVERAGE,
    STOP_LOSS,
    TAKE_PROFIT,
    TRAILING,
    BORROW,
    FUNDING,
    DRAWDOWN_LIMIT,
    PAUSE_BARS,
    CAPITAL,
    REENTER,
) = range(20)
N_RULES = 20
PREFETCH_AHEAD = 8  # step_envs_parallel asks for the next bar of the env this many ahead
STREAM_FLOATS = 8  # a streamed observation store moves 8 float32 (32 bytes, one AVX register)
STREAM_ALIGN = 4 * STREAM_FLOATS  # bytes: where a streamed store may start
REENTER_NEXT_BAR, REENTER_SIGNAL = 0, 1
# columns of the per-env ``risk`` state (N, 8): distances are fractions of the entry price;
# STOPPED is the side (+1 long, -1 short) a stop closed while ``reenter`` = signal keeps it out
ENTRY, EXTREME, STOP_DIST, TAKE_DIST, TRAIL_DIST, PAUSE_LEFT, BREAKER_PEAK, STOPPED = range(8)
N_RISK = 8
# columns of ``fills`` (N, 9), this step's executions (PARTIAL: the order hit the volume cap)
(ENTRY_PRICE, ENTRY_UNITS, ENTRY_FEE, EXIT_PRICE, EXIT_UNITS, EXIT_FEE, EXIT_REASON, FINANCING, PARTIAL) = range(9)
NO_EXIT, STOP_EXIT, TAKE_EXIT, TRAIL_EXIT, END_EXIT = 0, 1, 2, 3, 4


@intrinsic
def _prefetch(typingctx, array, index):
    """Ask the CPU to bring ``array[index]`` (1-D) into its caches (LLVM's prefetch: read, high
    locality); a hint with no effect on results."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        data = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, data, [args[1]], wraparound=False)
        byte_pointer = ir.IntType(8).as_pointer()
        int32 = ir.IntType(32)
        function_type = ir.FunctionType(ir.VoidType(), [byte_pointer, int32, int32, int32])
        prefetch = cgutils.get_or_insert_function(builder.module, function_type, "llvm.prefetch.p0i8")
        hint = [ir.Constant(int32, 0), ir.Constant(int32, 3), ir.Constant(int32, 1)]
        builder.call(prefetch, [builder.bitcast(pointer, byte_pointer), *hint])
        return context.get_dummy_value()

    return types.void(array, index), codegen


def stream_buffer(shape: tuple[int, ...]) -> np.ndarray:
    """float32 zeros of ``shape`` starting on a 64-byte boundary (numpy promises 16), so that
    every observation row of a whole number of vectors is streamed whole (``copy_window``)."""
    size = 4 * int(np.prod(shape))
    raw = np.zeros(size + 64, np.uint8)
    skip = -raw.ctypes.data % 64
    return raw[skip : skip + size].view(np.float32).reshape(shape)


@intrinsic
def _address(typingctx, array):
    """The address of ``array``'s first element, as an integer (to check its alignment)."""

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.ptrtoint(data.data, context.get_value_type(types.intp))

    return types.intp(array), codegen


@intrinsic
def _stream_floats(typingctx, dst, dst_index, src, src_index):
    """dst[dst_index : dst_index + STREAM_FLOATS] = src[src_index : ...] for 1-D float32 arrays,
    stored past the caches (LLVM's non-temporal store: no read of the destination line first,
    and the written lines do not evict the data the kernel reads). ``dst[dst_index]`` must be
    STREAM_ALIGN-byte aligned. Other threads see the values after ``_store_fence``."""

    def codegen(context, builder, signature, args):
        dst_type, _, src_type, _ = signature.args
        vector = ir.VectorType(ir.FloatType(), STREAM_FLOATS).as_pointer()
        dst_data = context.make_array(dst_type)(context, builder, args[0])
        src_data = context.make_array(src_type)(context, builder, args[2])
        to = cgutils.get_item_pointer(context, builder, dst_type, dst_data, [args[1]], wraparound=False)
        source = cgutils.get_item_pointer(context, builder, src_type, src_data, [args[3]], wraparound=False)
        value = builder.load(builder.bitcast(source, vector), align=4)
        store = builder.store(value, builder.bitcast(to, vector), align=STREAM_ALIGN)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return types.void(dst, dst_index, src, src_index), codegen


@intrinsic
def _store_fence(typingctx):
    """A full memory fence (x86: ``mfence``): this thread's streamed stores are visible to every
    thread before anything it does next."""

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@njit(cache=True, error_model="numpy")
def _xorshift(state: np.ndarray, i: int) -> np.uint64:
    """Advance env i's xorshift64* generator; returns the next 64-bit draw."""
    x = state[i]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    state[i] = x
    return x * np.uint64(2685821657736338717)


@njit(cache=True, error_model="numpy")
def copy_window(row, features, first, stream):
    """row[:] = features[first : first + len(row)] (1-D float32). With ``stream`` the floats are
    stored past the caches (``_stream_floats``) from the row's first STREAM_ALIGN-byte boundary
    on, in whole vectors, and the floats before and after are copied as usual: a kernel that
    writes many windows per step keeps the bars and features it reads in the caches. A thread
    that streamed fences (``_store_fence``) before another reads the rows."""
    width = row.shape[0]
    head = min((-_address(row) % STREAM_ALIGN) // 4, width) if stream else width
    tail = head + (width - head) // STREAM_FLOATS * STREAM_FLOATS
    for k in range(head):  # explicit loops: numba vectorises them better than a slice copy
        row[k] = features[first + k]
    for k in range(head, tail, STREAM_FLOATS):
        _stream_floats(row, k, features, first + k)
    for k in range(tail, width):
        row[k] = features[first + k]


@njit(cache=True, error_model="numpy")
def _write_obs(i, t, features, window, units, close, equity, obs, account, stream):
    """obs[i] = the window of feature rows t-window+1 .. t (``copy_window``, ``stream``);
    account[i] = (position fraction, log equity). ``features`` is the (T, F) matrix flattened
    row-major and ``obs`` the (N, window, F) buffer viewed as (N, window * F), so the window is
    one contiguous copy."""
    safe_equity = max(equity[i], MIN_EQUITY)
    width = obs.shape[1]
    copy_window(obs[i], features, (t - window + 1) * (width // window), stream)
    account[i, 0] = units[i] * close / safe_equity
    account[i, 1] = np.log(safe_equity)


@njit(cache=True, error_model="numpy")
def _reset_env(
    i, start, bars, features, window, t, cash, units, requested, equity, steps, stats, risk, obs, account, stream
):
    """Env i starts at bar ``start`` with all cash (1.0), no position and fresh statistics
    (``stream``: see ``copy_window``)."""
    t[i] = start
    cash[i] = 1.0
    units[i] = 0.0
    requested[i] = 0.0
    equity[i] = 1.0
    steps[i] = 0
    stats[i, 0] = 1.0  # equity peak (drawdown reward)
    stats[i, 1] = 0.0  # EMA of returns (differential Sharpe's A)
    stats[i, 2] = 0.0  # EMA of squared returns (B)
    risk[i, :] = 0.0
    risk[i, BREAKER_PEAK] = 1.0
    _write_obs(i, start, features, window, units, bars[start, CLOSE], equity, obs, account, stream)


@njit(cache=True, error_model="numpy")
def _draw_start(rng_state, i, low, high):
    """A start bar uniform in [low, high) from env i's own generator."""
    return low + np.int64(_xorshift(rng_state, i) % np.uint64(max(high - low, 1)))


@njit(cache=True, error_model="numpy")
def reset_envs(
    mask, starts, bars, features, window, t, cash, units, requested, equity, steps, stats, risk, obs, account
):
    """Reset every env with ``mask[i]`` at bar ``starts[i]``."""
    for i in range(mask.shape[0]):
        if mask[i]:
            _reset_env(
                i,
                starts[i],
                bars,
                features,
                window,
                t,
                cash,
                units,
                requested,
                equity,
                steps,
                stats,
                risk,
                obs,
                account,
                False,
            )


@njit(cache=True, error_model="numpy")
def sample_starts(rng_state, mask, low, high, starts):
    """For each env with ``mask[i]``, a start bar uniform in [low, high)."""
    for i in range(mask.shape[0]):
        if mask[i]:
            starts[i] = _draw_start(rng_state, i, low, high)


@njit(cache=True, error_model="numpy")
def _reward(kind, param, previous_equity, new_equity, stats, i):
    """The step's reward; updates env i's reward statistics."""
    log_return = np.log(max(new_equity, MIN_EQUITY) / max(previous_equity, MIN_EQUITY))
    if kind == DIFFERENTIAL_SHARPE:
        r = new_equity / max(previous_equity, MIN_EQUITY) - 1.0
        a, b = stats[i, 1], stats[i, 2]
        delta_a, delta_b = r - a, r * r - b
        variance = b - a * a
        stats[i, 1] = a + param * delta_a
        stats[i, 2] = b + param * delta_b
        return (b * delta_a - 0.5 * a * delta_b) / variance**1.5 if variance > 1e-12 else 0.0
    if kind == DRAWDOWN_PENALTY:
        peak = stats[i, 0]
        before = 1.0 - previous_equity / peak
        peak = max(peak, new_equity)
        stats[i, 0] = peak
        return log_return - param * max(1.0 - new_equity / peak - before, 0.0)
    return log_return


@njit(cache=True, error_model="numpy")
def _slippage(rules, units_traded, last_volume, scale):
    """Fraction of the price paid against the trade: (fixed x the bar's scale) + impact x
    sqrt(participation in the last known bar's volume). Account units are per unit of starting
    equity: x CAPITAL gives the order's real size."""
    slip = rules[SLIPPAGE] * scale
    if rules[IMPACT] > 0.0:
        participation = abs(units_traded) * rules[CAPITAL] / last_volume if last_volume > 0 else 1.0
        slip += rules[IMPACT] * np.sqrt(participation)
    return slip


@njit(cache=True, error_model="numpy")
def _fill(rules, units_traded, base_price, last_volume, slippage_scale, fee_scale):
    """(price, fee) of trading ``units_traded`` at ``base_price``: slippage against the trade,
    fee on the filled notional. The one execution formula of entries, stop exits and closes."""
    slip = _slippage(rules, units_traded, last_volume, slippage_scale)
    price = base_price * (1.0 + slip * np.sign(units_traded))
    return price, abs(units_traded) * price * rules[FEE] * fee_scale


@njit(cache=True, error_model="numpy")
def _execute(i, rules, units_traded, base_price, last_volume, slippage_scale, fee_scale, cash, units):
    """Fill env i's order of ``units_traded`` at ``base_price`` (``_fill``) and book it: cash
    pays notional and fee, units change. Every execution (entry, stop exit, final close) is this."""
    price, fee = _fill(rules, units_traded, base_price, last_volume, slippage_scale, fee_scale)
    cash[i] -= units_traded * price + fee
    units[i] += units_traded
    return price, fee


@njit(cache=True, error_model="numpy")
def _order_units(rules, sized, units, mark, o, last_volume, slippage_scale, fee_scale):
    """Units to trade at the open ``o`` so that the position is ``sized`` x the equity left after
    the order's own costs. With c the cost per unit of notional (slippage, and the fee on the
    slipped price) priced at the naive order, x = (sized x mark / o - units) / (1 + sized c sign).
    The naive order is the larger one when the position grows, so its impact over-estimates c and
    the position never exceeds ``sized`` x equity (leverage stays within the cap)."""
    naive = sized * max(mark, 0.0) / o - units
    if naive == 0.0:
        return 0.0
    side = 1.0 if naive > 0 else -1.0
    slip = _slippage(rules, naive, last_volume, slippage_scale)
    cost = slip + (1.0 + slip * side) * rules[FEE] * fee_scale  # = what _fill charges per notional
    return naive / max(1.0 + sized * cost * side, 1e-9)


@njit(cache=True, error_model="numpy")
def _stop_exit(position, risk_row, o, h, l, entered_now):
    """(exit price, reason) if a stop, trailing stop or take-profit hits in this bar, else (0, 0).

    Stops are checked before the take-profit (the conservative order when a bar touches both);
    a bar that opens through a level fills at the open. A position entered at this bar's open
    is only checked against the bar's range."""
    entry, extreme = risk_row[ENTRY], risk_row[EXTREME]
    stop_dist, take_dist, trail_dist = risk_row[STOP_DIST], risk_row[TAKE_DIST], risk_row[TRAIL_DIST]
    side = 1.0 if position > 0 else -1.0
    stop, reason = -np.inf, NO_EXIT
    if stop_dist > 0:
        stop, reason = side * entry * (1.0 - side * stop_dist), STOP_EXIT
    if trail_dist > 0 and side * extreme * (1.0 - side * trail_dist) > stop:
        stop, reason = side * extreme * (1.0 - side * trail_dist), TRAIL_EXIT
    take = side * entry * (1.0 + side * take_dist) if take_dist > 0 else np.inf
    # in "side" space a long's adverse move is down: compare side * price with the levels
    opening, worst, best = side * o, (side * l if side > 0 else side * h), (side * h if side > 0 else side * l)
    if not entered_now and opening <= stop:
        return o, reason
    if not entered_now and opening >= take:
        return o, TAKE_EXIT
    if worst <= stop:
        return side * stop, reason
    if best >= take:
        return side * take, TAKE_EXIT
    return 0.0, NO_EXIT


@njit(cache=True, error_model="numpy")
def _sized_target(i, target, bars, t, rules, risk):
    """The position (fraction of equity) the account aims for after bar t's close: the target x
    bar t's size multiplier for its side, within +-max_leverage; 0 while a stop keeps it out."""
    size = bars[t, SIZE] if target >= 0 else bars[t, SHORT_SIZE]
    sized = min(max(target * size, -rules[MAX_LEVERAGE]), rules[MAX_LEVERAGE])
    if risk[i, STOPPED] != 0.0:
        if np.sign(target) == risk[i, STOPPED]:
            return 0.0  # reenter = signal: out until the agent's target leaves the stopped side
        risk[i, STOPPED] = 0.0
    return sized


@njit(cache=True, error_model="numpy", inline="always")
def _step_env(
    i,
    target,
    bars,
    features,
    window,
    rules,
    auto_reset,
    rng_state,
    start_low,
    start_high,
    t,
    cash,
    units,
    requested,
    equity,
    steps,
    stats,
    risk,
    obs,
    account,
    reward,
    terminated,
    truncated,
    fills,
    stream,
):
    """Advance env i one bar towards ``target`` (see ``step_envs``; ``stream``: see
    ``copy_window``)."""
    last_bar = bars.shape[0] - 1
    now, nxt = t[i], t[i] + 1
    o, h, l, c = bars[nxt, OPEN], bars[nxt, HIGH], bars[nxt, LOW], bars[nxt, CLOSE]
    last_volume, slip_scale, fee_scale = bars[now, VOLUME], bars[nxt, SLIPPAGE_SCALE], bars[nxt, FEE_SCALE]
    previous_equity = equity[i]
    for column in range(fills.shape[1]):
        fills[i, column] = 0.0
    entered = False  # a position opened (or flipped) at this bar's open
    if risk[i, PAUSE_LEFT] > 0:  # the drawdown breaker holds the account flat
        risk[i, PAUSE_LEFT] -= 1
        target = 0.0
    sized = _sized_target(i, target, bars, now, rules, risk)
    if abs(sized - requested[i]) > rules[REBALANCE] or (sized == 0.0 and units[i] != 0.0):
        traded = _order_units(rules, sized, units[i], cash[i] + units[i] * o, o, last_volume, slip_scale, fee_scale)
        cap = rules[MAX_PARTICIPATION] * last_volume / rules[CAPITAL]
        partial = rules[MAX_PARTICIPATION] > 0 and abs(traded) > cap
        if partial:
            traded = np.sign(traded) * cap
        if traded != 0.0:
            before = units[i]
            price, fee = _execute(i, rules, traded, o, last_volume, slip_scale, fee_scale, cash, units)
            fills[i, ENTRY_PRICE], fills[i, ENTRY_UNITS], fills[i, ENTRY_FEE] = price, traded, fee
            fills[i, PARTIAL] = 1.0 if partial else 0.0
            if units[i] != 0.0 and (before == 0.0 or np.sign(before) != np.sign(units[i])):
                unit = bars[now, STOP_UNIT]
                entered = True
                risk[i, ENTRY], risk[i, EXTREME] = price, price
                risk[i, STOP_DIST] = rules[STOP_LOSS] * unit
                risk[i, TAKE_DIST] = rules[TAKE_PROFIT] * unit
                risk[i, TRAIL_DIST] = rules[TRAILING] * unit
        if not partial or rules[CARRY] == 0.0:
            requested[i] = sized
    if units[i] != 0.0 and (rules[STOP_LOSS] > 0 or rules[TAKE_PROFIT] > 0 or rules[TRAILING] > 0):
        exit_price, reason = _stop_exit(units[i], risk[i], o, h, l, entered)
        if reason != NO_EXIT:
            traded = -units[i]
            price, fee = _execute(i, rules, traded, exit_price, last_volume, slip_scale, fee_scale, cash, units)
            requested[i] = 0.0  # the account is flat: an unchanged target asks to re-enter
            if rules[REENTER] == REENTER_SIGNAL:
                risk[i, STOPPED] = -np.sign(traded)
            fills[i, EXIT_PRICE], fills[i, EXIT_UNITS], fills[i, EXIT_FEE] = price, traded, fee
            fills[i, EXIT_REASON] = reason
        else:
            risk[i, EXTREME] = max(risk[i, EXTREME], h) if units[i] > 0 else min(risk[i, EXTREME], l)
    financing = rules[BORROW] * max(-units[i], 0.0) * c + rules[FUNDING] * max(-cash[i], 0.0)
    cash[i] -= financing
    fills[i, FINANCING] = financing
    t[i] = nxt
    steps[i] += 1
    equity[i] = cash[i] + units[i] * c
    if rules[DRAWDOWN_LIMIT] > 0:
        risk[i, BREAKER_PEAK] = max(risk[i, BREAKER_PEAK], equity[i])
        if equity[i] < risk[i, BREAKER_PEAK] * (1.0 - rules[DRAWDOWN_LIMIT]):
            risk[i, PAUSE_LEFT] = max(rules[PAUSE_BARS], 1.0)
            risk[i, BREAKER_PEAK] = equity[i]
    reward[i] = _reward(int(rules[REWARD_KIND]), rules[REWARD_PARAM], previous_equity, equity[i], stats, i)
    terminated[i] = equity[i] < rules[EQUITY_FLOOR]
    truncated[i] = (steps[i] >= rules[EPISODE_LENGTH] or nxt >= last_bar) and not terminated[i]
    if auto_reset and (terminated[i] or truncated[i]):
        _reset_env(
            i,
            _draw_start(rng_state, i, start_low, start_high),
            bars,
            features,
            window,
            t,
            cash,
            units,
            requested,
            equity,
            steps,
            stats,
            risk,
            obs,
            account,
            stream,
        )
    else:
        _write_obs(i, nxt, features, window, units, c, equity, obs, account, stream)


@njit(cache=True, error_model="numpy")
def step_envs(
    targets,
    bars,
    features,
    window,
    rules,
    auto_reset,
    rng_state,
    start_low,
    start_high,
    t,
    cash,
    units,
    requested,
    equity,
    steps,
    stats,
    risk,
    obs,
    account,
    reward,
    terminated,
    truncated,
    fills,
):
    """Advance every env one bar towards its target position (fraction of equity, before sizing).

    ``requested`` holds each env's last requested sized target; a sized target within
    ``rebalance_threshold`` of it trades nothing. Writes reward, terminated (equity under
    ``equity_floor``), truncated (episode length reached, or no next bar), and this bar's
    executions into ``fills``. With ``auto_reset`` a finished env restarts at once at a random
    bar in [start_low, start_high) and ``obs`` holds its new episode's first window; without it
    the caller must reset finished envs before stepping them again. Returns how many envs
    finished (terminated or truncated) in this step.
    """
    finished = 0
    for i in range(targets.shape[0]):
        _step_env(
            i,
            targets[i],
            bars,
            features,
            window,
            rules,
            auto_reset,
            rng_state,
            start_low,
            start_high,
            t,
            cash,
            units,
            requested,
            equity,
            steps,
            stats,
            risk,
            obs,
            account,
            reward,
            terminated,
            truncated,
            fills,
            False,
        )
        finished += terminated[i] or truncated[i]
    return finished


@njit(cache=True, error_model="numpy", parallel=True)
def step_envs_parallel(
    targets,
    bars,
    features,
    window,
    rules,
    auto_reset,
    rng_state,
    start_low,
    start_high,
    t,
    cash,
    units,
    requested,
    equity,
    steps,
    stats,
    risk,
    obs,
    account,
    reward,
    terminated,
    truncated,
    fills,
    blocks,
):
    """``step_envs`` with the envs cut into ``blocks`` contiguous blocks spread over numba's
    threads (one block per thread: ``numba.get_num_threads()``). Envs share no state, so the
    result is bit-identical for any thread and block count. Observation windows are streamed
    past the caches (``copy_window``): a step writes N windows (2 KB each at 32 x 16), which
    would otherwise evict the bars and features the next envs read; each block ends with a
    fence. Returns how many envs finished."""
    n = targets.shape[0]
    flat_bars = bars.reshape(-1)
    blocks = max(min(blocks, n), 1)
    finished = 0
    for block in prange(blocks):
        for i in range(block * n // blocks, (block + 1) * n // blocks):
            if i + PREFETCH_AHEAD < n:
                first = t[i + PREFETCH_AHEAD] * bars.shape[1]  # its rows of bars t and t+1
                for offset in range(0, 2 * bars.shape[1], 8):  # a 64-byte cache line holds 8 values
                    _prefetch(flat_bars, first + offset)
                _prefetch(flat_bars, first + 2 * bars.shape[1] - 1)
            _step_env(
                i,
                targets[i],
                bars,
                features,
                window,
                rules,
                auto_reset,
                rng_state,
                start_low,
                start_high,
                t,
                cash,
                units,
                requested,
                equity,
                steps,
                stats,
                risk,
                obs,
                account,
                reward,
                terminated,
                truncated,
                fills,
                True,
            )
            finished += terminated[i] or truncated[i]
        _store_fence()
    return finished


@njit(cache=True, error_model="numpy", parallel=True)
def walk_targets(
    targets,
    bars,
    features,
    window,
    rules,
    auto_reset,
    rng_state,
    start_low,
    start_high,
    t,
    cash,
    units,
    requested,
    equity,
    steps,
    stats,
    risk,
    obs,
    account,
    reward,
    terminated,
    truncated,
    fills,
    equity_path,
    position_path,
    financing_path,
    fill_path,
    fill_steps,
    n_fills,
    ends,
):
    """Walk env i through ``targets[i]`` (N, S; every array here is env-major, so each env's
    path is contiguous): step k = 1..S moves it towards ``targets[i, k - 1]`` exactly as
    ``step_envs`` would (no auto-reset), and records its equity ``equity_path[i, k]``, position
    fraction ``position_path[i, k]`` and financing charged ``financing_path[i, k]``. Steps with
    an execution are recorded sparsely: the e-th of env i is step ``fill_steps[i, e]`` (0-based)
    with its ``fills`` row ``fill_path[i, e]``, for e < ``n_fills[i]`` (later rows are not
    written). An env stops at its first terminated or truncated step, written to ``ends[i]``
    (its account stays as it ended): ``auto_reset`` must be False. Envs are spread over numba's
    threads and share no state: the result is bit-identical to stepping bar by bar, for any
    thread count."""
    n_steps = targets.shape[1]
    # each env's done flags on a cache line of its own while walking: threads walk neighbouring
    # envs at the same time, and writing one shared bool array every step would make them fight
    # over its lines (false sharing; it made 2 threads slower than 1)
    own_flags = np.zeros((2, targets.shape[0], 64), np.bool_)
    own_terminated, own_truncated = own_flags[0, :, 0], own_flags[1, :, 0]
    for i in prange(targets.shape[0]):
        for k in range(1, n_steps + 1):
            _step_env(
                i,
                targets[i, k - 1],
                bars,
                features,
                window,
                rules,
                auto_reset,
                rng_state,
                start_low,
                start_high,
                t,
                cash,
                units,
                requested,
                equity,
                steps,
                stats,
                risk,
                obs,
                account,
                reward,
                own_terminated,
                own_truncated,
                fills,
                False,
            )
            equity_path[i, k] = equity[i]
            position_path[i, k] = account[i, 0]
            financing_path[i, k] = fills[i, FINANCING]
            if fills[i, ENTRY_UNITS] != 0.0 or fills[i, EXIT_UNITS] != 0.0:
                fill_path[i, n_fills[i], :] = fills[i, :]
                fill_steps[i, n_fills[i]] = k - 1
                n_fills[i] += 1
            if own_terminated[i] or own_truncated[i]:
                ends[i] = k
                break
        terminated[i], truncated[i] = own_terminated[i], own_truncated[i]


@njit(cache=True, error_model="numpy")
def fill_totals(fill_path, n_fills, closing, scale):
    """Per env of a walk's executions (``fill_path`` (N, S, 9), the first ``n_fills[i]`` rows
    of env i) plus its ``closing`` fills (N, 9), units x ``scale``: (traded notional, fees,
    number of fills)."""
    n = fill_path.shape[0]
    traded, fees, count = np.zeros(n), np.zeros(n), np.zeros(n, np.int64)
    for i in range(n):
        for e in range(n_fills[i] + 1):
            row = fill_path[i, e] if e < n_fills[i] else closing[i]
            for units, price, fee in ((ENTRY_UNITS, ENTRY_PRICE, ENTRY_FEE), (EXIT_UNITS, EXIT_PRICE, EXIT_FEE)):
                if row[units] != 0.0:
                    traded[i] += abs(row[units] * scale) * row[price]
                    fees[i] += row[fee] * scale
                    count[i] += 1
    return traded, fees, count


@njit(cache=True, error_model="numpy")
def close_positions(bars, rules, t, cash, units, requested, equity, fills):
    """Close every open position at its bar's close ``close[t]`` (the end of a backtest), charged
    like any exit: slippage and impact against the trade (bar t's volume, known at its close) and
    the fee. Overwrites ``fills`` with the closing trade (EXIT_REASON = END_EXIT)."""
    for i in range(t.shape[0]):
        fills[i, :] = 0.0
        if units[i] == 0.0:
            continue
        now = t[i]
        traded = -units[i]
        price, fee = _execute(
            i,
            rules,
            traded,
            bars[now, CLOSE],
            bars[now, VOLUME],
            bars[now, SLIPPAGE_SCALE],
            bars[now, FEE_SCALE],
            cash,
            units,
        )
        requested[i] = 0.0
        equity[i] = cash[i]
        fills[i, EXIT_PRICE], fills[i, EXIT_UNITS], fills[i, EXIT_FEE] = price, traded, fee
        fills[i, EXIT_REASON] = END_EXIT
