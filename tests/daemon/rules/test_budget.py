"""The budget rule as a table of snapshots."""
from __future__ import annotations

from daemon.actions import SendAlert, Shutdown, StopWorker
from daemon.rules.budget import BudgetSnapshot, decide


def snap(spent, projected=None, cap=600.0):
    return BudgetSnapshot(spent_usd=spent, cap_usd=cap, fractions=(0.5, 0.8), projected_usd=projected,
                          rate_usd_per_h=2.5, action="ec2-stop")


def walk(spends, projected=None):
    fired, out = frozenset(), []
    for spent in spends:
        actions, fired = decide(snap(spent, projected), fired)
        out.append(actions)
    return out, fired


def subjects(actions):
    return [a.subject for a in actions if isinstance(a, SendAlert)]


def test_each_fraction_alerts_once():
    out, fired = walk([100, 299, 300, 301, 450, 479, 480, 500, 599])
    assert [subjects(a) for a in out] == [[], [], ["50 % of the budget spent"], [], [], [],
                                          ["80 % of the budget spent"], [], []]
    assert fired == {"fraction:0.5", "fraction:0.8"}


def test_a_jump_past_both_fractions_sends_both():
    out, _ = walk([10, 490])
    assert subjects(out[1]) == ["50 % of the budget spent", "80 % of the budget spent"]


def test_the_cap_checkpoints_stops_and_shuts_down_once():
    out, fired = walk([599, 600, 650])
    kinds = [type(a) for a in out[1]]
    assert kinds == [SendAlert, StopWorker, Shutdown]
    assert out[1][0].subject.startswith("budget cap reached") and out[1][2].action == "ec2-stop"
    assert out[2] == [] and "cap" in fired


def test_forecast_over_the_cap_warns_before_the_money_is_gone():
    fired = frozenset()
    a1, fired = decide(snap(50, projected=700), fired)
    assert subjects(a1) == ["forecast $700.00 passes the $600.00 cap"]
    a2, fired = decide(snap(60, projected=710), fired)
    assert a2 == []  # once
    a3, fired = decide(snap(70, projected=500), fired)  # back under 95 %: re-armed
    a4, fired = decide(snap(80, projected=650), fired)
    assert a3 == [] and len(subjects(a4)) == 1


def test_unknown_forecast_is_no_warning():
    actions, _ = decide(snap(10, projected=None), frozenset())
    assert actions == []


def test_the_cap_says_how_to_go_on_on_one_instance_and_on_a_cluster():
    from daemon.cluster import ClusterMoney
    from daemon.money import Money

    for money, says, never in ((Money, "systemctl restart amapiano-train", "sky jobs"),
                               (ClusterMoney, "launch the job again (sky jobs launch)", "systemctl")):
        s = BudgetSnapshot(spent_usd=601, cap_usd=600.0, fractions=(), projected_usd=None, rate_usd_per_h=2.5,
                           action="auto", go_on=money.GO_ON)
        [alert, *_] = decide(s, frozenset())[0]
        assert says in alert.body and never not in alert.body, alert.body
