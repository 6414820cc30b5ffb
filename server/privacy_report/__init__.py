"""The DP budget report of a run: JSON for programs, one self-contained HTML page for auditors.

DESIGN.md §4 "Budget report". The guarantee is user-level (ε, δ)-DP: every user holds the
ε of the ledger of the client that holds them (one user per client in `device`, the hub's
users in `hub`), so the headline is the maximum over the clients' ledgers, composed over
rounds and runs with dp-accounting's PLD accountant (RDP alongside as a cross-check; never
GDP); `shared.privacy.guarantee` holds that composition rule. The central ledger is either a
central reference run's DP-SGD ledger or, in a federated run with central DP, the server's
DP-FedAvg ledger: then every user's ε composes their client's ledger (if local DP is on too)
with the server's, the metrics' "epsilon" is the local maximum and "central_epsilon" the
server's, and the report states both.

The package: `read` (the run directory), `assemble` (the typed `PrivacyReport`), `verify`
(the checks), `text` (the headline and the limits), `html` (the page), `write` (all of it).
"""

from .assemble import PrivacyReport, json_safe
from .html import render_html
from .read import audit_result
from .checks import Check
from .verify import ABS_SLACK, RDP_FACTOR
from .write import build_privacy_report, write_privacy_report

_audit_result = audit_result
"""The former private name, kept for callers that import it."""

__all__ = [
    "ABS_SLACK",
    "RDP_FACTOR",
    "Check",
    "PrivacyReport",
    "_audit_result",
    "audit_result",
    "build_privacy_report",
    "json_safe",
    "render_html",
    "write_privacy_report",
]
