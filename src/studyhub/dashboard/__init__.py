"""The operations dashboard: a small FastAPI app (``create_dashboard``) that renders the ops
library's typed results as HTML — doctor checks, slow queries and their history, index findings
and advice, live sessions and the blocking tree, sizes and growth, backups and the erasure
audit — for every configured profile. No SQL here: every number comes from ``studyhub.ops``."""
