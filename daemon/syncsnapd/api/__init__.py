"""The endpoints of docs/api.md: the only package that joins the HTTP layer to runs, sources and the store.
"""

from ._browse import register_browse as register_browse
from ._dashboard import Dashboard as Dashboard
from ._endpoints import Api as Api
from ._errors import STATUS_BY_CODE as STATUS_BY_CODE
from ._errors import http_status as http_status
from ._metrics import Metrics as Metrics
from ._metrics import store_footprint as store_footprint
from ._operations import register_operations as register_operations
from ._runs import register_runs as register_runs
from ._store_view import register_store_view as register_store_view
from ._versions import register_versions as register_versions
