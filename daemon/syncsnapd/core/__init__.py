"""The bottom layer: configuration, the progress model, the error base class and supervision.

No I/O beyond reading the configuration file; every other package may import this one.
"""

from ._checks import check_private_dir as check_private_dir
from ._checks import overlap_warnings as overlap_warnings
from ._config import CONFIG_KEYS as CONFIG_KEYS
from ._config import DaemonConfig as DaemonConfig
from ._config import KeepPolicy as KeepPolicy
from ._config import ProjectConfig as ProjectConfig
from ._config import SyncthingConfig as SyncthingConfig
from ._config import load_config as load_config
from ._errors import ConfigError as ConfigError
from ._errors import SyncsnapdError as SyncsnapdError
from ._ignore import IgnoreRules as IgnoreRules
from ._ignore import ignored_at_or_above as ignored_at_or_above
from ._ignore import walked_path as walked_path
from ._progress import Plan as Plan
from ._progress import Progress as Progress
from ._progress import RunCancelled as RunCancelled
from ._progress import RunProgress as RunProgress
from ._progress import SnapshotSummary as SnapshotSummary
from ._progress import Step as Step
from ._progress import count_of as count_of
from ._progress import human_bytes as human_bytes
from ._progress import parse_time as parse_time
from ._progress import utc_now as utc_now
from ._s3 import S3Options as S3Options
from ._s3 import parse_s3_url as parse_s3_url
from ._s3 import staging_dir as staging_dir
from ._s3 import store_location as store_location
from ._supervise import ServiceError as ServiceError
from ._supervise import ServiceStatus as ServiceStatus
from ._supervise import Supervisor as Supervisor
