"""The model path's checks on Spark Connect, as on a classic session: saving checks that the executors' writes reach
the driver (``paths.check_writable_together``, in DataFrame jobs), loading lists the folder through the driver
(``paths.hadoop_files``, a DataFrame read's listing); a bad path is the same one line on both.

On a local master every executor shares the driver's disk and the save check is skipped; here ``on_a_cluster``
makes it run as on a cluster master. The Spark Connect tests run under ``tests.test_connect``'s guard (no
SparkContext, no RDD); the classic ones run the same on ``local_connect``'s server, a classic session."""
import os

import numpy as np
import pytest

from mnist_lenet_spark import models
from mnist_lenet_spark.cluster import paths
from mnist_lenet_spark.data import DataError
from mnist_lenet_spark.ml import NetworkClassificationModel
from tests.test_connect import no_spark_context  # noqa: F401  (the guard, autouse: no SparkContext, no RDD)

pytestmark = pytest.mark.timeout(120)
SESSIONS = ["connect", "classic"]


@pytest.fixture
def session(request, connect_pair):
    """The session of the test's ``kind`` parameter: the client, or the server (a classic session) with the guard
    off, since a classic check runs RDD tasks."""
    server, client = connect_pair
    if request.param == "classic":
        request.getfixturevalue("monkeypatch").undo()  # the guard's patches: it is set up first (autouse)
    return client if request.param == "connect" else server


@pytest.fixture
def on_a_cluster():
    """The save check runs as on a cluster master (on local[N] it is skipped: one disk for all). A patch of its own,
    which ``session`` does not undo."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paths, "_on_cluster", lambda spark: True)
        yield


def a_model(seed: int = 0) -> NetworkClassificationModel:
    return NetworkClassificationModel(models.network_from("lenet").init_params(seed))


def save(session, path) -> None:
    a_model().write().session(session).save(str(path))


def load(session, path) -> NetworkClassificationModel:
    return NetworkClassificationModel.read().session(session).load(str(path))


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("session", SESSIONS, indirect=True)
def test_a_model_path_that_cannot_be_made_is_one_line(session, on_a_cluster, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    path = tmp_path / "file" / "model"
    with pytest.raises(DataError) as e:
        save(session, path)
    assert one_line(e) == f"model path {path}: cannot create it (Not a directory)"


@pytest.mark.parametrize("session", SESSIONS, indirect=True)
def test_a_model_path_the_executors_cannot_write_is_one_line(session, on_a_cluster):
    path = "/sys"  # a folder that nobody, root included, writes a file in
    try:
        with open(os.path.join(path, "lenet-test"), "w"):
            pytest.skip("/sys takes files here")
    except OSError as e:
        if not os.path.isdir(path) or e.strerror != "Permission denied":
            pytest.skip(f"no /sys that refuses a file ({e.strerror})")
    with pytest.raises(DataError) as e:
        save(session, path)
    assert one_line(e).startswith(f"model path {path}: the executors cannot write there (")
    assert str(e.value).endswith(f": Permission denied); {paths.HINT}")


@pytest.mark.parametrize("session", SESSIONS, indirect=True)
def test_writes_that_do_not_reach_the_driver_are_one_line_and_leave_nothing(session, on_a_cluster, monkeypatch,
                                                                            tmp_path):
    monkeypatch.setattr(paths, "hadoop_files", lambda spark, pattern: [])  # the driver lists none of the probes,
    path = tmp_path / "new" / "model"  # as when each host has its own disk
    with pytest.raises(DataError) as e:
        save(session, path)
    assert one_line(e) == (f"model path {path}: what the executors write there does not reach the driver (each "
                           f"host has its own {path}); {paths.HINT}")
    assert os.listdir(tmp_path / "new") == []  # the folder the check made is gone, and its probe files


def test_a_model_saves_and_loads_on_spark_connect_with_the_check(connect_pair, on_a_cluster, monkeypatch, tmp_path):
    client = connect_pair[1]
    asked = []
    listed = paths.hadoop_files
    monkeypatch.setattr(paths, "hadoop_files", lambda spark, pattern: asked.append(pattern) or listed(spark, pattern))
    model = a_model()
    model.write().save(str(tmp_path / "model"))  # the active session: the client
    assert model.write().sparkSession is client
    assert len(asked) == 1 and "lenet-probe-" in asked[0]  # the check ran, and found every probe
    assert sorted(os.listdir(tmp_path / "model")) == ["data", "metadata"]  # no probe file left
    loaded = NetworkClassificationModel.load(str(tmp_path / "model"))
    assert sorted(loaded.weights) == sorted(model.weights)
    for name, value in model.weights.items():
        np.testing.assert_array_equal(loaded.weights[name], value, err_msg=name)
    with pytest.raises(Exception, match="already exists"):  # not overwritten unless asked
        model.write().save(str(tmp_path / "model"))
    other = a_model(seed=1)
    other.write().overwrite().save(str(tmp_path / "model"))  # no JVM here: each part overwrites its folder
    again = NetworkClassificationModel.load(str(tmp_path / "model"))
    for name, value in other.weights.items():
        np.testing.assert_array_equal(again.weights[name], value, err_msg=name)


@pytest.mark.parametrize("session", SESSIONS, indirect=True)
def test_loading_a_folder_that_is_not_a_model_is_one_line(session, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a model")
    for path in (tmp_path / "other", tmp_path / "nowhere"):
        with pytest.raises(DataError) as e:
            load(session, path)
        assert one_line(e) == f"{path}: not a saved model (no metadata/ in it)"


def test_the_driver_lists_the_same_files_on_both(connect_pair, tmp_path):
    server, client = connect_pair
    folder = tmp_path / "a b"
    folder.mkdir()
    for name in ("part-00000", "part-00001", "other"):
        (folder / name).write_text(name)
    pattern = f"{folder}/part-*"
    assert paths.hadoop_files(client, pattern) == paths.hadoop_files(server, pattern) == [
        f"file:{folder}/part-00000", f"file:{folder}/part-00001"]
    assert paths.hadoop_files(client, f"{folder}/none-*") == paths.hadoop_files(server, f"{folder}/none-*") == []


@pytest.mark.parametrize("session", SESSIONS, indirect=True)
def test_input_the_executors_do_not_find_is_one_line(session, on_a_cluster, tmp_path):
    paths.check_readable(session, str(tmp_path), "train data")  # there: no error
    with pytest.raises(DataError) as e:
        paths.check_readable(session, str(tmp_path / "none"), "train data")
    assert one_line(e).startswith(f"train data {tmp_path / 'none'}: the executors cannot read it (not on ")


@pytest.mark.parametrize("session", SESSIONS, indirect=True)
def test_a_folder_named_with_glob_characters_passes_the_check_and_keeps_nothing_of_it(session, on_a_cluster,
                                                                                     tmp_path):
    folder = tmp_path / "a [b] {c} *"
    paths.check_writable_together(session, str(folder), "model path")  # the driver lists the probes by name
    assert folder.is_dir() and os.listdir(folder) == []
