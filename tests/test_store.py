"""A staging URL (s3://): the executors write and read the shards through fsspec, here against moto's S3 server on
the loopback, on local[2] (tests/test_netns_cluster.py does it across hosts)."""
import socket
import subprocess

import numpy as np
import pytest

from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.data import DataError
from mnist_lenet_spark.ml import LeNetClassifier
from tests import s3_server
from tests.test_ml import binary_rows


@pytest.fixture(scope="module")
def store(spark, tmp_path_factory):
    """The server's endpoint, given to the executors' Python as the session's executor environment."""
    with socket.socket() as s:  # a free port on the loopback
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = s3_server.start(lambda argv, **kw: subprocess.Popen(argv, start_new_session=True, **kw), "127.0.0.1",
                           port, tmp_path_factory.mktemp("moto") / "moto.log")
    env = s3_server.client_env("127.0.0.1", port)
    store_fs(env).mkdir("lenet-test")  # the user's bucket
    saved = dict(spark.sparkContext.environment)
    spark.sparkContext.environment.update(env)  # what spark.executorEnv.* does at start
    try:
        yield env
    finally:
        spark.sparkContext.environment.clear()
        spark.sparkContext.environment.update(saved)
        s3_server.stop(proc)


def store_fs(env):
    import s3fs
    return s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                             endpoint_url=env["AWS_ENDPOINT_URL_S3"], skip_instance_cache=True)


def objects(env, url):
    """Every object under ``url``, listed from this process."""
    return store_fs(env).find(url)


def test_fit_with_an_s3_staging_url_equals_the_array_path_and_leaves_no_object(spark, mnist, store):
    images, labels = mnist.train.images[:300], mnist.train.labels[:300]
    clf = LeNetClassifier(workers=2, batchSize=16, maxSteps=4, seed=5, stagingDir="s3://lenet-test/staging")
    during = []
    clf._progress = lambda: lambda record: record["step"] == 1 and during.extend(objects(store, "lenet-test"))
    model = clf.fit(binary_rows(spark, images, labels))
    assert sorted(name.rsplit("/", 1)[1] for name in during) == [
        f"shard-0000{k}-{what}.npy" for k in (0, 1) for what in ("images", "labels")]
    assert all(name.startswith("lenet-test/staging/lenet-shards-") for name in during)
    arrays = msp.SyncSGD(spark, 2, batch_size=16, seed=5).fit(images, labels, max_steps=4)
    for k, v in arrays.params.items():
        np.testing.assert_allclose(model.weights[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
    assert objects(store, "lenet-test") == []


@pytest.mark.parametrize("url, message", [
    ("nosuch://bucket/x", "staging directory nosuch://bucket/x: no filesystem for nosuch://"),
    ("s3://ab/x", "staging directory s3://ab/x: the executors cannot write there ("),  # an invalid bucket name
])
def test_a_staging_url_the_executors_cannot_write_is_one_line_before_staging(spark, mnist, store, url, message):
    rows = binary_rows(spark, mnist.train.images[:40], mnist.train.labels[:40])
    with pytest.raises(DataError) as error:
        LeNetClassifier(workers=2, maxSteps=1, stagingDir=url).fit(rows)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
