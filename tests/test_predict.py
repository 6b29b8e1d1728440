"""jobs/predict.py: what it writes, its column and pixel-range flags, and its one-line errors. main() runs
in-process; each call starts and stops its own local[1] session."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mnist_lenet_spark.jobs import predict

BASE = ["--master", "local[1]"]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, mnist):
    """A LeNet trained for two steps, saved; its predictions of the first 60 test images on the driver."""
    from mnist_lenet_spark import session
    from mnist_lenet_spark.ml import LeNetClassifier
    folder = tmp_path_factory.mktemp("predict")
    spark = session.session("local[1]", conf={"spark.ui.enabled": "false"})
    try:
        images, labels = mnist.train.images[:64], mnist.train.labels[:64]
        rows = spark.createDataFrame([(int(y), x.tobytes()) for x, y in zip(images, labels)],
                                     "label long, features binary")
        model = LeNetClassifier(workers=1, batchSize=16, maxSteps=2).fit(rows)
        model.save(str(folder / "model"))
        expected = model.predict(mnist.test.images[:60])
    finally:
        spark.stop()
    return folder / "model", expected


def parquet_rows(path, mnist, n=60, label="digit", scale=1.0):
    """Test images as a Parquet file: ``pixels`` (784 numbers each), ``label`` (unless None) and an ``id`` column."""
    table = {"id": np.arange(n), "pixels": [(x.reshape(-1) * scale).tolist() for x in mnist.test.images[:n]]}
    if label:
        table[label] = mnist.test.labels[:n].astype(np.int64)
    pq.write_table(pa.table(table), path)
    return str(path)


def test_parquet_with_its_own_column_names_writes_label_prediction_and_probability(saved_model, mnist, tmp_path,
                                                                                  capsys):
    model, expected = saved_model
    rows = parquet_rows(tmp_path / "rows.parquet", mnist, scale=1 / 255)  # values 0..1
    out = tmp_path / "out"
    status = predict.main([*BASE, "--model", str(model), "--input", rows, "--format", "parquet", "--features-col",
                           "pixels", "--label-col", "digit", "--pixel-range", "0..1", "--output", str(out),
                           "--evaluate"])
    assert status == 0, capsys.readouterr().err
    written = pq.read_table(out)
    assert written.column_names == ["label", "prediction", "probability"]  # not id, not pixels
    assert written.column("label").to_pylist() == mnist.test.labels[:60].tolist()
    assert written.column("prediction").to_pylist() == expected.astype(float).tolist()
    accuracy = float(np.mean(expected == mnist.test.labels[:60]))
    assert f"accuracy: {accuracy:.4f}" in capsys.readouterr().out.splitlines()


def test_rows_without_labels_are_written_without_a_label_and_evaluate_is_one_line(saved_model, mnist, tmp_path,
                                                                                  capsys):
    model, expected = saved_model
    rows = parquet_rows(tmp_path / "rows.parquet", mnist, label=None)
    common = [*BASE, "--model", str(model), "--input", rows, "--format", "parquet", "--features-col", "pixels"]
    assert predict.main([*common, "--output", str(tmp_path / "out")]) == 0
    written = pq.read_table(tmp_path / "out")
    assert written.column_names == ["prediction", "probability"]
    assert written.column("prediction").to_pylist() == expected.astype(float).tolist()
    capsys.readouterr()
    assert predict.main([*common, "--evaluate"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"predict: error: --evaluate needs labels: {rows} has no column 'label' "
                                f"(--label-col); it has id, pixels"]


@pytest.mark.parametrize("flags,message", [
    (["--features-col", "pixels"], "--features-col needs --format parquet"),
    (["--label-col", "y"], "--label-col needs --format parquet"),
    (["--format", "parquet", "--pixel-range", "1"], "--pixel-range: invalid choice: '1'"),
])
def test_column_and_range_flags_go_with_parquet(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        predict.parse_args(["--model", "m", "--input", "i", "--evaluate", *flags])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_features_outside_the_models_pixel_range_are_one_line_naming_the_flag(saved_model, mnist, tmp_path, capsys):
    model, _ = saved_model
    rows = parquet_rows(tmp_path / "rows.parquet", mnist, n=20, label="label", scale=1 / 255)  # 0..1, not declared
    status = predict.main([*BASE, "--model", str(model), "--input", rows, "--format", "parquet", "--features-col",
                           "pixels", "--evaluate"])
    assert status == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("predict: error: column 'pixels' has a value that is not a whole number") and \
        last.endswith("(--pixel-range)")
