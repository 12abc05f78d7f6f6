"use client";
import { useExecutions } from "@fanout/react";
import type { ReactNode } from "react";

export default function ExecutionsPage(): ReactNode {
  const executions = useExecutions();
  return (
    <div className="panel">
      <h2>Executions of your teams</h2>
      {executions.length === 0 && <p className="muted">No executions yet.</p>}
      <table data-testid="executions">
        <tbody>
          {executions.map((execution) => (
            <tr key={execution.execution_id} data-status={execution.status}>
              <td style={{ textAlign: "left" }}>{execution.execution_id}</td>
              <td style={{ textAlign: "left" }} className="muted">{execution.team_id}</td>
              <td style={{ width: "40%" }}>
                <div className={`bar ${execution.status}`}>
                  <div style={{ width: `${execution.progress}%` }} />
                </div>
              </td>
              <td>{Math.round(execution.progress)}%</td>
              <td style={{ textAlign: "left" }}>{execution.status}</td>
              <td style={{ textAlign: "left" }} className="muted">{execution.error ?? execution.current_step ?? ""}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
