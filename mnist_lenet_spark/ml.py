"""Any network as a ``pyspark.ml`` Estimator and Model: ``fit(DataFrame)``, ``transform``, ``Pipeline``,
``save``/``load``. ``NetworkClassifier`` takes the network in its ``model`` Param (a preset's name, or a composed
network's JSON definition, ``docs/models.md``); ``LeNetClassifier`` is its LeNet preset.

``NetworkClassifier.fit`` turns its Params into a ``fit.FitPlan`` and runs the one fit the job runs too: the rows
are staged as shard files (``staging``) and trained by ``SyncSGD`` (``mode='async'``: ``AsyncSGD``); the training
set never passes through the driver. ``transform`` adds ``prediction``, ``probability`` and ``rawPrediction``
(log-probabilities) columns, computed on the executors in Arrow batches. Defaults come from ``config``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (HasCheckpointInterval, HasFeaturesCol, HasLabelCol, HasPredictionCol,
                                     HasProbabilityCol, HasRawPredictionCol, HasSeed, HasValidationIndicatorCol)
from pyspark.ml.util import (DefaultParamsReadable, DefaultParamsReader, DefaultParamsWritable, DefaultParamsWriter,
                             MLReadable, MLReader, MLWritable, MLWriter)

from mnist_lenet_spark import data, fit, models, readers, tracking
from mnist_lenet_spark.cluster import one_job, paths, staging
from mnist_lenet_spark.config import BackupConfig, ConfigError, SGDConfig, TrainingConf
from mnist_lenet_spark.executor import inference, rows
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark.loop import update
from mnist_lenet_spark.models import base, definitions

log = logging.getLogger(__name__)


def _param(name: str, doc: str, convert) -> Param:
    return Param(Params._dummy(), name, doc, typeConverter=convert)


class _NetworkParams(HasFeaturesCol, HasLabelCol, HasPredictionCol, HasProbabilityCol, HasRawPredictionCol, HasSeed,
                   HasValidationIndicatorCol, HasCheckpointInterval):
    """The Params of NetworkClassifier and its model, each declared once; defaults from ``config``."""
    model = _param("model", "the network: 'lenet' (SystemML's LeNet), 'resnet' (ResNet-8 with batch norm), or a "
                   "network composed from the layers: its JSON definition (docs/models.md), saved with the model",
                   TypeConverters.toString)
    imageShape = _param("imageShape", "[channels, height, width] of the images: features hold that many pixels "
                        "channel-major (lenet: height and width multiples of 4)", TypeConverters.toListInt)
    pixelRange = _param("pixelRange", "what numeric features hold: '0..255' whole numbers, or '0..1' multiples of "
                        "1/255 (binary features: bytes 0 or 1); other values are refused, never rounded",
                        TypeConverters.toString)
    mode = _param("mode", "'sync': synchronous SGD, each step applies the workers' gradients together; 'async': "
                  "asynchronous SGD (Downpour-style), each worker's gradient applied as it arrives (docs/async.md)",
                  TypeConverters.toString)
    engine = _param("engine", "'auto' (one-job, unless stagingDir, backupMode='wait-all', "
                    "backupCombine='executors' or too few task slots on a classic session ask for per-step), "
                    "'per-step' (a Spark job a step: broadcast, mapPartitions, treeReduce) or 'one-job' (one job of "
                    "long-lived tasks around a coordinator; DataFrame operations only)", TypeConverters.toString)
    coordinator = _param("coordinator", "where the one-job engine's coordinator runs: 'client' (this process), "
                         "'cluster' (one more task of the job, for a Spark Connect client the executors cannot "
                         "reach) or 'auto' (client if the executors reach this process, else cluster)",
                         TypeConverters.toString)
    workers = _param("workers", "gradient tasks (shards) per step; effective batch = batchSize x workers",
                     TypeConverters.toInt)
    backupWorkers = _param("backupWorkers", "extra gradient tasks per step whose slowest results are dropped",
                           TypeConverters.toInt)
    backupMode = _param("backupMode", "with backupWorkers: 'cancel' goes on at the workers-th result; 'wait-all' "
                        "waits for every task and keeps the first workers (a comparison mode)", TypeConverters.toString)
    backupCombine = _param("backupCombine", "where the kept gradients are added: 'driver' (a running sum) or "
                           "'executors' (a job over the kept tasks' cached results; for tens of workers and more)",
                           TypeConverters.toString)
    maxStaleness = _param("maxStaleness", "mode 'async': refuse a gradient more than this many updates behind "
                          "(unset: off)", TypeConverters.toInt)
    batchSize = _param("batchSize", "examples per worker per step", TypeConverters.toInt)
    epochs = _param("epochs", "passes over the training data", TypeConverters.toInt)
    maxSteps = _param("maxSteps", "stop after this many steps (0: no limit)", TypeConverters.toInt)
    lr = _param("lr", "learning rate", TypeConverters.toFloat)
    momentum = _param("momentum", "Nesterov momentum", TypeConverters.toFloat)
    lrDecay = _param("lrDecay", "learning rate multiplied by this once per epoch", TypeConverters.toFloat)
    l2 = _param("l2", "L2 regularisation of the weights", TypeConverters.toFloat)
    warmupSteps = _param("warmupSteps", "linear learning-rate warm-up over this many steps", TypeConverters.toInt)
    lrSchedule = _param("lrSchedule", "'exponential': lr x lrDecay per epoch; 'cosine': per step, to 0 at the "
                        "last step (lrDecay unused)", TypeConverters.toString)
    lrScaling = _param("lrScaling", "'linear': lr x workers x batchSize / 64; 'none'", TypeConverters.toString)
    checkpointDir = _param("checkpointDir", "local folder for checkpoint.npz, written every checkpointInterval steps "
                           "and at the end (empty: none)", TypeConverters.toString)
    resume = _param("resume", "go on from checkpointDir's checkpoint.npz (refused if it was written by a fit of other "
                    "settings)", TypeConverters.toBoolean)
    initialModel = _param("initialModel", "warm start: the path of a saved NetworkClassificationModel of the same "
                          "network whose weights the fit starts from (a fresh schedule, no momentum); empty: the "
                          "network's initialisation", TypeConverters.toString)
    stagingDir = _param("stagingDir", "where the staged shards go: a folder every executor mounts or a store's URL "
                        "(s3://bucket/prefix, through fsspec); empty: each executor's own local disk",
                        TypeConverters.toString)
    stragglerProb = _param("stragglerProb", "experiments: probability that a task is delayed", TypeConverters.toFloat)
    stragglerDelay = _param("stragglerDelay", "experiments: seconds of an injected delay", TypeConverters.toFloat)
    showProgress = _param("showProgress", "show a progress bar while fitting", TypeConverters.toBoolean)
    earlyStoppingPatience = _param("earlyStoppingPatience", "stop once the validation metric has not improved for "
                                   "this many validations in a row (each epoch's end; needs validationIndicatorCol) "
                                   "and keep the best parameters; 0: off", TypeConverters.toInt)
    earlyStoppingMinDelta = _param("earlyStoppingMinDelta", "early stopping: an improvement is a change of more than "
                                   "this", TypeConverters.toFloat)
    earlyStoppingMetric = _param("earlyStoppingMetric", "early stopping watches the validation 'accuracy' or 'loss'",
                                 TypeConverters.toString)
    mlflowTracking = _param("mlflowTracking", "log the fit to MLflow (needs mlflow): params, step and validation "
                            "metrics, the summary, plots and the model; an active MLflow run is logged into "
                            "without it", TypeConverters.toBoolean)

    def __init__(self):
        super().__init__()
        sgd, backup = SGDConfig(), BackupConfig()
        self._setDefault(model="lenet", imageShape=list(models.MNIST_SHAPE), pixelRange="0..255", mode="sync",
                         engine="auto", coordinator="auto", workers=TrainingConf.workers, backupWorkers=backup.workers,
                         backupMode=backup.mode, backupCombine=backup.combine, resume=False, initialModel="",
                         batchSize=sgd.batch_size,
                         epochs=sgd.epochs, maxSteps=0, lr=sgd.lr, momentum=sgd.momentum, lrDecay=sgd.lr_decay,
                         l2=sgd.l2, warmupSteps=sgd.warmup_steps, lrSchedule=sgd.lr_schedule, lrScaling="none",
                         seed=sgd.seed, checkpointInterval=0, checkpointDir="", stagingDir="", stragglerProb=0.0,
                         stragglerDelay=0.0, showProgress=False, earlyStoppingPatience=sgd.early_stopping_patience,
                         earlyStoppingMinDelta=sgd.early_stopping_min_delta,
                         earlyStoppingMetric=sgd.early_stopping_metric, mlflowTracking=False)

    def _classes(self) -> tuple[int, bool]:
        """(the class count, whether it was given rather than a default): the estimator's ``numClasses`` Param, a
        fitted model's count."""
        raise NotImplementedError

    def _network(self):
        """The ``models.base.Model`` the ``model`` and ``imageShape`` Params and the class count (``_classes``) name
        (a ConfigError for an unknown name or a shape it cannot take)."""
        name = self.getOrDefault(self.model)
        shape, (classes, classes_given) = tuple(self.getOrDefault(self.imageShape)), self._classes()
        if models.is_definition(name):  # its shapes are its own; set ones must agree
            shape = shape if self.isSet(self.imageShape) else None
            classes = classes if classes_given else None
        try:
            return models.network_from(name, shape, classes)
        except ValueError as e:
            raise ConfigError(f"model: {e}") from None

    def _pixel_range(self) -> str:
        try:
            return rows.check_pixel_range(self.getOrDefault(self.pixelRange))
        except ValueError as e:
            raise ConfigError(f"pixelRange: {e}") from None

    def sgd_config(self) -> SGDConfig:
        """The SGDConfig the Params give; a bad value is a ConfigError naming the Param (``earlyStoppingMetric:
        early_stopping_metric must be ...``)."""
        return self._config(SGDConfig, _SGD_FIELDS, "")

    def backup_config(self) -> BackupConfig:
        """The BackupConfig of ``backupWorkers``, ``backupMode`` and ``backupCombine``; a bad value is a ConfigError
        naming the Param (``backupMode: must be ...``, without the field's ``backup_mode``)."""
        return self._config(BackupConfig, _BACKUP_FIELDS, "backup_")

    def _config(self, cls, fields: dict[str, str], prefix: str):
        """``cls`` of the Params ``fields`` names (Param: field); a ConfigError that names a field (``prefix`` +
        field) names its Param, in place of the field when there is a ``prefix``."""
        values = {field: self.getOrDefault(getattr(self, name)) for name, field in fields.items()}
        if "max_steps" in values:
            values["max_steps"] = values["max_steps"] or None  # maxSteps 0: no limit
        try:
            return cls(**values)
        except ConfigError as e:
            name = next((n for n, f in fields.items() if str(e).startswith(f"{prefix}{f} ")), None)
            if name is None:
                raise
            message = str(e)[len(prefix + fields[name]) + 1:] if prefix else str(e)
            raise ConfigError(f"{name}: {message}") from None


#: Param name: the BackupConfig field it sets (backupMode: mode)
_BACKUP_FIELDS = {fit.PARAMS("backup_" + f): f for f in ("workers", "mode", "combine")}
#: Param name: the SGDConfig field it sets (lrDecay: lr_decay)
_SGD_FIELDS = {fit.PARAMS(f): f for f in ("batch_size", "lr", "momentum", "lr_decay", "l2", "epochs", "seed",
                                          "max_steps", "warmup_steps", "lr_schedule", "early_stopping_patience",
                                          "early_stopping_min_delta", "early_stopping_metric")}


def _add_accessors(cls, names: list[str]) -> None:
    """getX / setX for each named Param, as pyspark.ml's own classes spell them out."""
    for name in names:
        title = name[0].upper() + name[1:]
        if not hasattr(cls, "get" + title):
            setattr(cls, "get" + title, lambda self, _n=name: self.getOrDefault(getattr(self, _n)))
        setattr(cls, "set" + title, lambda self, value, _n=name: self._set(**{_n: value}))


#: every Param of _NetworkParams: its own and those of the pyspark.ml.param.shared classes it mixes in
_PARAMS = [n for c in _NetworkParams.__mro__ for n, v in vars(c).items() if isinstance(v, Param)]


@dataclass
class TrainingSummary:
    history: list[dict]  # one record per step: loss, lr, examples, seconds, ...
    validation: list[dict] = field(default_factory=list)  # {step, epoch, accuracy, loss}
    staging_seconds: float = 0.0  # the one pass that staged the shards
    # early stopping (earlyStoppingPatience > 0): the model's weights are the best validation's
    stopped_early: bool = False  # the fit stopped because the validation metric stopped improving
    stopped_step: int | None = None  # the step it stopped after
    best_step: int | None = None  # the step of the best validation: the step of the model's weights
    best_metric: float | None = None  # the validation metric (earlyStoppingMetric) there
    mlflow_run_id: str | None = None  # the MLflow run the fit was logged to (mlflowTracking, or an active run)
    mlflow_model_uri: str | None = None  # the model logged there: mlflow.pyfunc.load_model(uri)
    mode: str = "sync"  # the mode that ran: 'sync' or 'async'
    # mode 'async': staleness of the updates {mean, p90, max} (versions applied between a gradient's pull and its
    # apply), and updates per second from the job's start to the budget spent; None in mode 'sync'
    staleness: dict | None = None
    updates_per_second: float | None = None


class NetworkClassifier(Estimator, _NetworkParams, DefaultParamsReadable, DefaultParamsWritable):
    """Trains a network with synchronous SGD (and backup workers) over Spark; see the module docstring."""
    _model_class = None  # what ``fit`` returns: NetworkClassificationModel (set below)
    # the estimator's alone: a fitted model's numClasses is the int of its network, as in pyspark's classifiers
    numClasses = _param("numClasses", "how many classes: labels are 0 .. numClasses - 1", TypeConverters.toInt)

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        self._setDefault(numClasses=models.MNIST_CLASSES)
        self._set(**self._input_kwargs)

    def _classes(self) -> tuple[int, bool]:
        return self.getOrDefault(self.numClasses), self.isSet(self.numClasses)

    @keyword_only
    def setParams(self, **kwargs) -> NetworkClassifier:
        return self._set(**self._input_kwargs)

    def _fit(self, dataset) -> NetworkClassificationModel:
        plan = self._plan()
        pixel_range = self._pixel_range()
        fit.check(plan)
        train_rows, validation_rows = dataset, None
        indicator = self.getValidationIndicatorCol() if self.isDefined(self.validationIndicatorCol) else ""
        if plan.config.early_stopping_patience and not indicator:
            raise ConfigError(f"earlyStoppingPatience {plan.config.early_stopping_patience} needs validation rows: "
                              f"set validationIndicatorCol")
        if indicator:
            train_rows, validation_rows = fit.split_validation(dataset, indicator, "validationIndicatorCol")
        state = self._start_state(plan, dataset.sparkSession)  # None: the network's initialisation
        sgd = fit.trainer(dataset.sparkSession, plan)
        tracker = tracking.tracker(self.getOrDefault(self.mlflowTracking), "mlflowTracking")
        features, label = self.getFeaturesCol(), self.getLabelCol()
        if tracker:
            tracker.start()
        try:
            if tracker:
                fit.track_start(tracker, plan, sgd, estimator=type(self).__name__, pixel_range=pixel_range,
                                features_col=features, label_col=label, resumed_from_step=state.step if state else 0,
                                initial_model=self.getOrDefault(self.initialModel) or "none")
            source = fit.Frames(train_rows, validation_rows, features, label, self.getOrDefault(self.stagingDir),
                                pixel_range)
            fitted = fit.run(sgd, plan, source, state, fit.each(self._progress(), tracker and tracker.on_step))
            result = fitted.result
            model = self._model_class(result.params, numClasses=plan.network.classes)  # the network's own
            self._copyValues(model)
            model._set(imageShape=list(plan.network.input_shape))
            model._summary = TrainingSummary(result.history, result.validation, fitted.staging_seconds,
                                             result.stopped_early, result.stopped_step, result.best_step,
                                             result.best_metric, mode=plan.mode)
            if plan.mode == "async":
                model._summary.staleness = result.staleness_summary()
                model._summary.updates_per_second = result.updates_per_second
            if tracker:
                summary = dict(fitted.figures)
                fit.track_result(tracker, fitted, plan, model.weights, f"{plan.workers} + {plan.backup.workers} "
                                 f"workers, {sgd.master}", pixel_range, summary)
                model._summary.mlflow_run_id = summary["mlflow_run_id"]
                model._summary.mlflow_model_uri = summary["mlflow_model_uri"]
                tracker_summary = {**summary, "early_stopping_metric": plan.config.early_stopping_metric,
                                   "validation": result.validation, "history": result.history}
        except BaseException as e:
            if tracker:
                tracker.fail(e)
            raise
        if tracker:
            fit.track_end(tracker, tracker_summary, None)
        return model

    def _plan(self) -> fit.FitPlan:
        """The fit the Params ask for (each bad value a ConfigError naming its Param)."""
        straggler = StragglerModel(self.getOrDefault(self.stragglerProb), self.getOrDefault(self.stragglerDelay))
        return fit.FitPlan(self._network(), self.getOrDefault(self.model), self.getOrDefault(self.workers),
                           self.getOrDefault(self.mode), self.sgd_config(), self.backup_config(),
                           self.getOrDefault(self.lrScaling), straggler,
                           self.getOrDefault(self.maxStaleness) if self.isDefined(self.maxStaleness) else None,
                           spelling=fit.PARAMS, engine=self.getOrDefault(self.engine),
                           coordinator=self.getOrDefault(self.coordinator),
                           checkpoint_dir=self.getOrDefault(self.checkpointDir) or None,
                           checkpoint_every=max(self.getOrDefault(self.checkpointInterval), 0))

    def _start_state(self, plan: fit.FitPlan, spark) -> update.TrainState | None:
        """Where the fit starts: checkpointDir's checkpoint (``resume``), a saved model's weights (``initialModel``),
        or None: the network's initialisation. ConfigError naming the Param when they do not fit this fit."""
        initial, resume = self.getOrDefault(self.initialModel), self.getOrDefault(self.resume)
        if initial and resume:
            raise ConfigError(f"initialModel {initial!r} and resume: give one (resume goes on from checkpointDir's "
                              f"checkpoint; initialModel starts a new schedule from a model's weights)")
        if resume and plan.checkpoint is None:
            raise ConfigError("resume: needs checkpointDir, the folder of the checkpoint.npz to go on from")
        weights = NetworkClassificationModel.read().session(spark).load(initial).weights if initial else None
        return fit.start_state(plan, resume, (f"initialModel {initial}", weights) if initial else None)

    def _progress(self):
        """Each step's progress (showProgress): a bar in a notebook or on a terminal, else a log line now and then."""
        if not self.getOrDefault(self.showProgress):
            return None
        from mnist_lenet_spark.progress import StepProgress
        return StepProgress().update


#: Spark 4 hands an Arrow UDF over a columnar source (Parquet) every column of its input in Arrow, which has no
#: type for a Vector column: transform would fail with UNSUPPORTED_DATATYPE UDT (README, "Spark settings")
COLUMNAR_UDF_INPUT = "spark.sql.execution.arrow.pythonUDF.columnarInput.enabled"


def _columnar_udf_input_off(dataset) -> None:
    """Turn COLUMNAR_UDF_INPUT off in ``dataset``'s session (logged) when a column of it is a Vector."""
    from pyspark.ml.linalg import VectorUDT
    conf = dataset.sparkSession.conf
    if any(isinstance(f.dataType, VectorUDT) for f in dataset.schema.fields) and \
            conf.get(COLUMNAR_UDF_INPUT, "true").lower() != "false":
        log.warning("setting %s=false in this session: the input has a Vector column, which Arrow cannot carry",
                    COLUMNAR_UDF_INPUT)
        conf.set(COLUMNAR_UDF_INPUT, "false")


class NetworkClassificationModel(Model, _NetworkParams, MLReadable, MLWritable):
    """A trained network: ``transform`` adds prediction, probability and rawPrediction columns.

    ``weights``: the NumPy parameters (``params`` is pyspark's list of Param objects, so it is
    not reused for them). ``summary``: the training history, when this model came from ``fit``.
    ``numClasses`` and ``numFeatures``: ints, as on pyspark's own classification models. ``numClasses`` (the
    constructor's) is the class count of a preset network (default 10); a network definition carries its own.
    """

    def __init__(self, weights: base.Params | None = None, numClasses: int | None = None):
        self._num_classes = numClasses
        super().__init__()
        # a LeNet saved by version 0.1.0 names its weights W1 .. b4
        self.weights = None if weights is None else definitions.legacy_lenet_weights(weights)
        self._summary: TrainingSummary | None = None

    def _classes(self) -> tuple[int, bool]:
        given = self._num_classes is not None
        return (int(self._num_classes) if given else models.MNIST_CLASSES), given

    @property
    def numClasses(self) -> int:
        """Number of classes (values which the label can take)."""
        return int(self._network().classes)

    @property
    def numFeatures(self) -> int:
        """Number of features a row holds: C x H x W pixels."""
        return int(np.prod(self._network().input_shape))

    def getNumClasses(self) -> int:
        return self.numClasses

    @property
    def hasSummary(self) -> bool:
        return self._summary is not None

    @property
    def summary(self) -> TrainingSummary:
        if self._summary is None:
            raise RuntimeError("no training summary: this model was loaded, not fitted")
        return self._summary

    def networkSummary(self) -> str:
        """Each layer of the network with its output shape and parameter count, and the total."""
        return self._network().summary()

    def predict(self, images: np.ndarray, pixelRange: str | None = None) -> np.ndarray:
        """Classes (n,) of images (n, ...) of C x H x W pixels each (MNIST: (n, 28, 28)), on the driver; pixels as
        ``predictProbability`` reads them."""
        return np.argmax(self.predictProbability(images, pixelRange), axis=1)

    def predictProbability(self, images: np.ndarray, pixelRange: str | None = None) -> np.ndarray:
        """Class probabilities (n, classes) of images (n, ...), on the driver, in batches of 500. Pixels are read
        as the model was trained to read them (its ``pixelRange``: uint8 bytes, numbers 0..255 or 0..1), unless
        ``pixelRange`` says otherwise; values outside it are a ConfigError, never rescaled."""
        network = self._network()
        pixels = rows.model_pixels(network, images, "images", self._pixel_range() if pixelRange is None else pixelRange)
        return inference.predict_images(network, self.weights, pixels)

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F
        from pyspark.sql.functions import pandas_udf

        features = self.getFeaturesCol()
        weights, network, pixel_range = self.weights, self._network(), self._pixel_range()
        staging.check_columns(dataset, features, None, int(np.prod(network.input_shape)), network.classes)
        column = one_job.arrow_features(dataset, features)
        _columnar_udf_input_off(dataset)

        @pandas_udf("prediction double, probability array<double>, raw array<double>")
        def predict(batch: pd.Series) -> pd.DataFrame:
            prediction, probability, raw = rows.predict_pixels(network, weights, batch, pixel_range=pixel_range)
            return pd.DataFrame({"prediction": prediction, "probability": list(probability), "raw": list(raw)})

        out = "__lenet_output"
        return (dataset.withColumn(out, predict(column))
                .withColumn(self.getPredictionCol(), F.col(f"{out}.prediction"))
                .withColumn(self.getProbabilityCol(), array_to_vector(F.col(f"{out}.probability")))
                .withColumn(self.getRawPredictionCol(), array_to_vector(F.col(f"{out}.raw")))
                .drop(out))

    # -- persistence: Params as MLlib's JSON metadata, weights as Parquet rows under data/ ------------------
    def write(self) -> MLWriter:
        return _ModelWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _ModelReader(cls)


class _ModelWriter(MLWriter):
    def __init__(self, instance: NetworkClassificationModel):
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        paths.check_writable_together(self.sparkSession, path, "model path")
        params = {p.name: value for p, value in self.instance._paramMap.items()}
        params["numClasses"] = self.instance.numClasses  # with the Params, where version 0.2.0 reads it
        spark, mode = self.sparkSession, "overwrite" if self.shouldOverwrite else "error"
        metadata = DefaultParamsWriter._get_metadata_to_save(self.instance, spark, paramMap=params)
        spark.createDataFrame([(metadata,)], ["value"]).coalesce(1).write.mode(mode).text(f"{path}/metadata")
        rows = [(i, name, list(value.shape), str(value.dtype), value.tobytes())
                for i, (name, value) in enumerate(self.instance.weights.items())]
        schema = "index int, name string, shape array<int>, dtype string, value binary"
        spark.createDataFrame(rows, schema).coalesce(1).write.mode(mode).parquet(f"{path}/data")

    def _handleOverwrite(self, path: str) -> None:
        """On Spark Connect (no JVM here to delete the folder with) each part overwrites its own folder."""
        if not one_job.is_connect(self.sparkSession):
            super()._handleOverwrite(path)


class _ModelReader(MLReader):
    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> NetworkClassificationModel:
        from pyspark.errors import AnalysisException
        if not readers.hadoop_files(self.sparkSession, f"{path.rstrip('/')}/metadata/part-*"):
            raise data.DataError(f"{path}: not a saved model (no metadata/ in it)")
        try:
            metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        except AnalysisException as e:
            raise data.DataError(f"{path}: not a saved model ({e.getMessage().splitlines()[0]})") from None
        records = sorted(self.sparkSession.read.parquet(f"{path}/data").collect(), key=lambda r: r["index"])
        weights = {r["name"]: np.frombuffer(r["value"], np.dtype(r["dtype"])).reshape(r["shape"]).copy()
                   for r in records}
        classes = metadata["paramMap"].pop("numClasses", None)  # the network's count, not a Param of the model
        metadata.get("defaultParamMap", {}).pop("numClasses", None)
        model = self.cls(weights, numClasses=classes)
        model._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(model, metadata)
        return model


class LeNetClassificationModel(NetworkClassificationModel):
    """A trained LeNet (``LeNetClassifier``); LeNet models saved by version 0.1.0 load as this class too."""


class LeNetClassifier(NetworkClassifier):
    """The LeNet preset of ``NetworkClassifier``: ``model`` is 'lenet'; other networks train with
    ``NetworkClassifier(model=...)``."""

    def _fit(self, dataset) -> LeNetClassificationModel:
        name = self.getOrDefault(self.model)
        if name != "lenet":  # a definition's JSON can be long: its first 40 characters
            shown = repr(name) if len(name) <= 40 else repr(name[:40] + "...")
            raise ConfigError(f"model: LeNetClassifier trains LeNet, not {shown}: use NetworkClassifier(model=...)")
        return super()._fit(dataset)


NetworkClassifier._model_class, LeNetClassifier._model_class = NetworkClassificationModel, LeNetClassificationModel
LeNetTrainingSummary = TrainingSummary  # its earlier name
_add_accessors(NetworkClassifier, _PARAMS + ["numClasses"])
_add_accessors(NetworkClassificationModel, _PARAMS)
