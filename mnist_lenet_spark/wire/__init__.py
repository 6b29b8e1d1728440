"""The wire between the driver and its tasks: the token handshake, the message formats and the task-side clients of the
step signal (``step_signal``) and of the asynchronous mode's parameter service (``parameters``). The executor's tasks
import the clients; the driver's servers (``cluster.step_signal``, ``cluster.async_service``) import the formats. No
pyspark import."""
