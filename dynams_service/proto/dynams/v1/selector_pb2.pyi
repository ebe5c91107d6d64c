from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Reweight(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REWEIGHT_UNSPECIFIED: _ClassVar[Reweight]
    REWEIGHT_NONE: _ClassVar[Reweight]
    REWEIGHT_INVERSE: _ClassVar[Reweight]
    REWEIGHT_NORMALIZED: _ClassVar[Reweight]

class ClassBalance(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLASS_BALANCE_UNSPECIFIED: _ClassVar[ClassBalance]
    CLASS_BALANCE_PER_CLASS: _ClassVar[ClassBalance]
    CLASS_BALANCE_GLOBAL: _ClassVar[ClassBalance]

class RatioSchedule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RATIO_SCHEDULE_UNSPECIFIED: _ClassVar[RatioSchedule]
    RATIO_SCHEDULE_CONSTANT: _ClassVar[RatioSchedule]
    RATIO_SCHEDULE_POWER: _ClassVar[RatioSchedule]

class Staleness(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STALENESS_UNSPECIFIED: _ClassVar[Staleness]
    STALENESS_SYNC: _ClassVar[Staleness]
    STALENESS_PIPELINED: _ClassVar[Staleness]

class RoundState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUND_STATE_UNSPECIFIED: _ClassVar[RoundState]
    ROUND_STATE_WAITING_FOR_WEIGHTS: _ClassVar[RoundState]
    ROUND_STATE_SCORING: _ClassVar[RoundState]
    ROUND_STATE_DONE: _ClassVar[RoundState]
    ROUND_STATE_FAILED: _ClassVar[RoundState]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_ACTIVE: _ClassVar[JobState]
    JOB_STATE_IDLE: _ClassVar[JobState]
    JOB_STATE_FINISHED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]

class SelectionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SELECTION_KIND_UNSPECIFIED: _ClassVar[SelectionKind]
    SELECTION_KIND_FULL: _ClassVar[SelectionKind]
    SELECTION_KIND_SUBSET: _ClassVar[SelectionKind]
REWEIGHT_UNSPECIFIED: Reweight
REWEIGHT_NONE: Reweight
REWEIGHT_INVERSE: Reweight
REWEIGHT_NORMALIZED: Reweight
CLASS_BALANCE_UNSPECIFIED: ClassBalance
CLASS_BALANCE_PER_CLASS: ClassBalance
CLASS_BALANCE_GLOBAL: ClassBalance
RATIO_SCHEDULE_UNSPECIFIED: RatioSchedule
RATIO_SCHEDULE_CONSTANT: RatioSchedule
RATIO_SCHEDULE_POWER: RatioSchedule
STALENESS_UNSPECIFIED: Staleness
STALENESS_SYNC: Staleness
STALENESS_PIPELINED: Staleness
ROUND_STATE_UNSPECIFIED: RoundState
ROUND_STATE_WAITING_FOR_WEIGHTS: RoundState
ROUND_STATE_SCORING: RoundState
ROUND_STATE_DONE: RoundState
ROUND_STATE_FAILED: RoundState
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_ACTIVE: JobState
JOB_STATE_IDLE: JobState
JOB_STATE_FINISHED: JobState
JOB_STATE_FAILED: JobState
SELECTION_KIND_UNSPECIFIED: SelectionKind
SELECTION_KIND_FULL: SelectionKind
SELECTION_KIND_SUBSET: SelectionKind

class Fingerprint(_message.Message):
    __slots__ = ("num_samples", "num_classes", "labels_sha256")
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    LABELS_SHA256_FIELD_NUMBER: _ClassVar[int]
    num_samples: int
    num_classes: int
    labels_sha256: str
    def __init__(self, num_samples: _Optional[int] = ..., num_classes: _Optional[int] = ..., labels_sha256: _Optional[str] = ...) -> None: ...

class ProxySpec(_message.Message):
    __slots__ = ("architecture", "width")
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    width: float
    def __init__(self, architecture: _Optional[str] = ..., width: _Optional[float] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("ratio", "warmup_epochs", "interval_epochs", "anneal_epochs", "class_balance", "ratio_schedule", "power_exponent", "seed", "staleness", "score", "explore", "coverage_strata", "coverage_prune", "reweight")
    RATIO_FIELD_NUMBER: _ClassVar[int]
    WARMUP_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    ANNEAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    CLASS_BALANCE_FIELD_NUMBER: _ClassVar[int]
    RATIO_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    POWER_EXPONENT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EXPLORE_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_STRATA_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_PRUNE_FIELD_NUMBER: _ClassVar[int]
    REWEIGHT_FIELD_NUMBER: _ClassVar[int]
    ratio: float
    warmup_epochs: int
    interval_epochs: int
    anneal_epochs: int
    class_balance: ClassBalance
    ratio_schedule: RatioSchedule
    power_exponent: float
    seed: int
    staleness: Staleness
    score: str
    explore: float
    coverage_strata: int
    coverage_prune: float
    reweight: Reweight
    def __init__(self, ratio: _Optional[float] = ..., warmup_epochs: _Optional[int] = ..., interval_epochs: _Optional[int] = ..., anneal_epochs: _Optional[int] = ..., class_balance: _Optional[_Union[ClassBalance, str]] = ..., ratio_schedule: _Optional[_Union[RatioSchedule, str]] = ..., power_exponent: _Optional[float] = ..., seed: _Optional[int] = ..., staleness: _Optional[_Union[Staleness, str]] = ..., score: _Optional[str] = ..., explore: _Optional[float] = ..., coverage_strata: _Optional[int] = ..., coverage_prune: _Optional[float] = ..., reweight: _Optional[_Union[Reweight, str]] = ...) -> None: ...

class ScorerResources(_message.Message):
    __slots__ = ("num_scorers", "num_cpus", "num_gpus", "batch_size", "cache_bytes")
    NUM_SCORERS_FIELD_NUMBER: _ClassVar[int]
    NUM_CPUS_FIELD_NUMBER: _ClassVar[int]
    NUM_GPUS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    num_scorers: int
    num_cpus: float
    num_gpus: float
    batch_size: int
    cache_bytes: int
    def __init__(self, num_scorers: _Optional[int] = ..., num_cpus: _Optional[float] = ..., num_gpus: _Optional[float] = ..., batch_size: _Optional[int] = ..., cache_bytes: _Optional[int] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("job_id", "dataset_uri", "fingerprint", "proxy", "policy", "epochs", "resources")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_URI_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PROXY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    dataset_uri: str
    fingerprint: Fingerprint
    proxy: ProxySpec
    policy: Policy
    epochs: int
    resources: ScorerResources
    def __init__(self, job_id: _Optional[str] = ..., dataset_uri: _Optional[str] = ..., fingerprint: _Optional[_Union[Fingerprint, _Mapping]] = ..., proxy: _Optional[_Union[ProxySpec, _Mapping]] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ..., epochs: _Optional[int] = ..., resources: _Optional[_Union[ScorerResources, _Mapping]] = ...) -> None: ...

class RoundStatus(_message.Message):
    __slots__ = ("round", "epoch", "state", "weights_version", "selected", "seconds", "error")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_VERSION_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    round: int
    epoch: int
    state: RoundState
    weights_version: int
    selected: int
    seconds: float
    error: str
    def __init__(self, round: _Optional[int] = ..., epoch: _Optional[int] = ..., state: _Optional[_Union[RoundState, str]] = ..., weights_version: _Optional[int] = ..., selected: _Optional[int] = ..., seconds: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class ScorerStatus(_message.Message):
    __slots__ = ("name", "node_id", "device", "rows", "input_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    INPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    node_id: str
    device: str
    rows: int
    input_bytes: int
    def __init__(self, name: _Optional[str] = ..., node_id: _Optional[str] = ..., device: _Optional[str] = ..., rows: _Optional[int] = ..., input_bytes: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("spec", "epoch_sizes", "rounds", "fraction_trained", "scorers", "scorer_status", "dashboard_url", "state", "error", "rounds_total", "rounds_done")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    EPOCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    FRACTION_TRAINED_FIELD_NUMBER: _ClassVar[int]
    SCORERS_FIELD_NUMBER: _ClassVar[int]
    SCORER_STATUS_FIELD_NUMBER: _ClassVar[int]
    DASHBOARD_URL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_DONE_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    epoch_sizes: _containers.RepeatedScalarFieldContainer[int]
    rounds: _containers.RepeatedCompositeFieldContainer[RoundStatus]
    fraction_trained: float
    scorers: _containers.RepeatedScalarFieldContainer[str]
    scorer_status: _containers.RepeatedCompositeFieldContainer[ScorerStatus]
    dashboard_url: str
    state: JobState
    error: str
    rounds_total: int
    rounds_done: int
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., epoch_sizes: _Optional[_Iterable[int]] = ..., rounds: _Optional[_Iterable[_Union[RoundStatus, _Mapping]]] = ..., fraction_trained: _Optional[float] = ..., scorers: _Optional[_Iterable[str]] = ..., scorer_status: _Optional[_Iterable[_Union[ScorerStatus, _Mapping]]] = ..., dashboard_url: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., error: _Optional[str] = ..., rounds_total: _Optional[int] = ..., rounds_done: _Optional[int] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class TensorPart(_message.Message):
    __slots__ = ("name", "dtype", "shape", "offset", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class WeightsChunk(_message.Message):
    __slots__ = ("job_id", "version", "epoch", "parts")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    epoch: int
    parts: _containers.RepeatedCompositeFieldContainer[TensorPart]
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ..., epoch: _Optional[int] = ..., parts: _Optional[_Iterable[_Union[TensorPart, _Mapping]]] = ...) -> None: ...

class PushAck(_message.Message):
    __slots__ = ("job_id", "version", "round", "bytes_received", "already_done")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_DONE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    round: int
    bytes_received: int
    already_done: bool
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ..., round: _Optional[int] = ..., bytes_received: _Optional[int] = ..., already_done: _Optional[bool] = ...) -> None: ...

class GetSelectionRequest(_message.Message):
    __slots__ = ("job_id", "epoch", "rank", "world_size", "drop_last")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    DROP_LAST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    epoch: int
    rank: int
    world_size: int
    drop_last: bool
    def __init__(self, job_id: _Optional[str] = ..., epoch: _Optional[int] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ..., drop_last: _Optional[bool] = ...) -> None: ...

class SelectionHeader(_message.Message):
    __slots__ = ("epoch", "round", "weights_version", "kind", "global_count", "rank_count", "weighted")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    RANK_COUNT_FIELD_NUMBER: _ClassVar[int]
    WEIGHTED_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    round: int
    weights_version: int
    kind: SelectionKind
    global_count: int
    rank_count: int
    weighted: bool
    def __init__(self, epoch: _Optional[int] = ..., round: _Optional[int] = ..., weights_version: _Optional[int] = ..., kind: _Optional[_Union[SelectionKind, str]] = ..., global_count: _Optional[int] = ..., rank_count: _Optional[int] = ..., weighted: _Optional[bool] = ...) -> None: ...

class SelectionChunk(_message.Message):
    __slots__ = ("header", "indices", "weights")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    header: SelectionHeader
    indices: bytes
    weights: bytes
    def __init__(self, header: _Optional[_Union[SelectionHeader, _Mapping]] = ..., indices: _Optional[bytes] = ..., weights: _Optional[bytes] = ...) -> None: ...
