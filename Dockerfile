# The images of robot_app, one per role, each from `pip install .[role]` (docker-compose.yml builds them):
#   target `learner`: the learner with its in-process gate, on a CUDA PyTorch base (EXTRAS is unused there);
#   target `slim` with EXTRAS=agent | gate | dashboard | sim: the agent, the gate's tool, the dashboard, the virtual
#   robot, on python-slim.
# Build stages install into /opt/venv; the run-time stages copy only that venv, and run as the unprivileged `robot`.
# Not built on the development machines (they have no Docker engine): hadolint lints this file in `make test`.

ARG PYTHON_BASE=python:3.11.11-slim-bookworm
ARG LEARNER_BASE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime

# ---- the package's source, and nothing else (.dockerignore keeps runs, keys and venvs out of the context) --------
FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY robot_app /src/robot_app
COPY policies /src/policies
COPY sim /src/sim
COPY calibration /src/calibration

# ---- python-slim roles ---------------------------------------------------------------------------------------------
FROM ${PYTHON_BASE} AS slim-build
ARG EXTRAS=agent
COPY --from=source /src /src
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "/src[${EXTRAS}]"

FROM ${PYTHON_BASE} AS slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 MUJOCO_GL=disable
RUN groupadd --system --gid 10001 robot \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin robot \
    && install -d -o robot -g robot /var/lib/robot-app /var/lib/robot-app/runs /var/lib/robot-app/registry \
       /var/lib/robot-app/agent /var/lib/robot-app/dashboard
COPY --from=slim-build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /var/lib/robot-app
ENTRYPOINT ["robot-app"]
CMD ["--help"]

# ---- the learner: torch comes with the base (pip sees torch==2.13.0 installed and keeps it) ----------------------
FROM ${LEARNER_BASE} AS learner-build
COPY --from=source /src /src
RUN python -m venv --system-site-packages /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "/src[learner,sim]"

FROM ${LEARNER_BASE} AS learner
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 MUJOCO_GL=disable
RUN groupadd --system --gid 10001 robot \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin robot \
    && install -d -o robot -g robot /var/lib/robot-app /var/lib/robot-app/runs /var/lib/robot-app/registry
COPY --from=learner-build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /var/lib/robot-app
ENTRYPOINT ["robot-app"]
CMD ["learner", "--help"]
