"""Exit non-zero with one clear line unless `java` 17 or newer is on PATH (pyspark 4 needs it)."""
import re
import shutil
import subprocess
import sys

java = shutil.which("java")
if java is None:
    sys.exit("java not found on PATH: install Java 17 or newer (pyspark needs it)")
out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
if not match:
    sys.exit(f"could not read the Java version from `java -version`: {out.strip()[:200]}")
major = int(match.group(1)) if match.group(1) != "1" else int(match.group(2))
if major < 17:
    sys.exit(f"Java {major} found at {java}; pyspark 4 needs Java 17 or newer")
